"""Command-line option values (`--scorer-option NAME.key=VALUE`): the one parser every command uses (torch-free, so
`diffalign serve-scorer` can read its options in a scorer's own environment)."""

from __future__ import annotations

_TRUE, _FALSE, _NONE = {"true", "yes", "on"}, {"false", "no", "off"}, {"none", "null"}


def parse_option_value(text: str) -> object:
    """A command-line option value: true/false, none, an int, a float, a JSON-quoted string, else the text."""
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    if lowered in _NONE:
        return None
    if text[:1] in "\"'" and text[-1:] == text[:1] and len(text) >= 2:
        return text[1:-1]
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text

"""Training prompts of online methods: a text file (one prompt per line) or the distinct captions of a pair table."""

from __future__ import annotations

from ..paths import looks_local, resolve_local
from .pairs import load_pair_table


def read_training_prompts(source: str, key: str = "rollout.prompts") -> list[str]:
    """The prompts of `source`: a .txt file's non-empty lines (`#` comments skipped), or a pair table's (any
    `data.path` form) distinct non-empty captions in first-seen order. An empty result is an error naming the
    source and the config `key` that gave it."""
    local = resolve_local(source)
    if local is None and looks_local(source):
        raise FileNotFoundError(f"{key} {source!r}: no such file")
    if local is not None and local.suffix == ".txt":
        if not local.is_file():
            raise FileNotFoundError(f"{key} {source!r}: no such file")
        lines = [line.strip() for line in local.read_text().splitlines()]
        prompts = [line for line in lines if line and not line.startswith("#")]
    else:
        try:
            table = load_pair_table(source)
        except (FileNotFoundError, ValueError) as error:
            raise ValueError(
                f"{key} {source!r}: expected a .txt file (one prompt per line) or a pair table ({error})"
            ) from error
        prompts = list(dict.fromkeys(c for c in table.select_columns(["caption"])["caption"] if c))
    if not prompts:
        raise ValueError(f"{key} {source!r}: no prompts found")
    return prompts

"""Which failures a user caused and can fix (a bad config, a missing file, a full disk), and the one short
message each gets instead of a traceback."""

from __future__ import annotations

from ..config.core import ConfigError


def expected_failure(error: BaseException) -> str | None:
    """The message to print for an error the user can act on, or None for an unexpected one (a bug), whose
    traceback should show."""
    if isinstance(error, KeyError):
        return str(error.args[0]) if error.args else repr(error)
    if isinstance(error, (ConfigError, FileNotFoundError, ValueError, FloatingPointError)):
        return str(error)
    return None

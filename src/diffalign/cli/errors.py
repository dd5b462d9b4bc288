"""Which failures a user caused and can fix (a bad config, a missing file, a full disk), and the one short
message each gets instead of a traceback."""

from __future__ import annotations

import errno
from pathlib import Path

from ..config.core import ConfigError
from ..processes import ProcessFailed

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
DENIED = (errno.EACCES, errno.EPERM)
DISK_FULL_TEXT = "No space left on device"  # libraries that wrap the OSError (safetensors, pyarrow) keep its text


def expected_failure(error: BaseException) -> str | None:
    """The message to print for an error the user can act on, or None for an unexpected one (a bug), whose
    traceback should show."""
    if isinstance(error, KeyError):
        return str(error.args[0]) if error.args else repr(error)
    if isinstance(error, (ConfigError, FileNotFoundError, ValueError, FloatingPointError, ProcessFailed)):
        return str(error)
    return file_system_failure(error)


def file_system_failure(error: BaseException) -> str | None:
    """The message for a file-system failure the user can fix (a full disk, a read-only or forbidden folder, a
    file where a folder is needed), found in `error` or the errors it was raised from; None for anything else."""
    chain = _causes(error)
    for cause in chain:
        if isinstance(cause, OSError) and cause.errno is not None:
            message = _os_error_message(cause)
            if message is not None:
                return message
    if any(DISK_FULL_TEXT.lower() in str(cause).lower() for cause in chain):
        return f"no space left on device ({error}): free space or choose another output folder"
    return None


def _causes(error: BaseException) -> list[BaseException]:
    """`error` and the errors it was explicitly raised from (`raise ... from`), outermost first."""
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__  # type: ignore[assignment]
    return chain


def _os_error_message(error: OSError) -> str | None:
    path = error.filename
    code = error.errno
    if code in DISK_FULL:
        where = f" writing {path}" if path else ""
        return f"no space left on device{where}: free space or choose another output folder"
    if path is None:
        return None
    if code == errno.EROFS:
        return f"cannot write {path}: the file system is read-only; choose another output folder"
    if code in DENIED:
        return f"cannot write {path}: permission denied; choose a folder you can write to, or change its permissions"
    if code == errno.ENOTDIR:
        file = next((p for p in (Path(path), *Path(path).parents) if p.is_file()), None)
        blocker = f"{file} is a file" if file is not None else "a part of it is a file"
        return f"cannot use {path}: {blocker}, where a folder is needed; move it or choose another path"
    if code == errno.EEXIST and Path(path).is_file():
        return f"{path} is a file, where a folder is needed; move it or choose another path"
    if code == errno.EISDIR:
        return f"{path} is a folder, where a file is needed; give a file path"
    if code == errno.ENAMETOOLONG:
        return f"file name too long: {path}"
    return None

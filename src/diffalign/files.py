"""Writing outputs atomically: a crash never leaves a half-written file where a finished one should be."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Let `write(file)` fill a temporary file next to `path`, then rename it over `path`.

    Readers see the old file or the new one, never a partial one; a failed write leaves no temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to a temporary file next to `path`, then rename it over `path`."""
    atomic_write(path, lambda out: out.write(text.encode("utf-8")))


def read_jsonl(path: Path, error: type[Exception] = ValueError) -> Iterator[tuple[str, int, object]]:
    """(where, line number, value) of each non-blank line of a JSON Lines file; a line that is not JSON
    raises `error` naming the file, the line and the column."""
    with Path(path).open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                yield where, number, json.loads(line)
            except json.JSONDecodeError as bad:
                raise error(f"{where}: not valid JSON ({bad.msg} at column {bad.colno})") from None


def atomic_save(out_dir: Path, write: Callable[[Path], Path]) -> Path:
    """Let `write(tmp_dir)` save into a temporary folder inside `out_dir`, then move its result into place.

    `write` returns the file or folder it wrote (inside tmp_dir); the same name in `out_dir` is
    replaced by a rename, so readers see either the old or the new version, never a partial one.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(dir=out_dir, prefix=".saving-"))
    try:
        written = write(tmp_dir)
        final = out_dir / written.relative_to(tmp_dir)
        if final.is_dir():
            old = out_dir / f".old-{final.name}"
            os.replace(final, old)
            os.replace(written, final)
            shutil.rmtree(old)
        else:
            os.replace(written, final)
        return final
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)

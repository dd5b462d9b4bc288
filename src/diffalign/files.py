"""Writing outputs atomically: a crash never leaves a half-written file where a finished one should be."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


def usual_mode(folder: bool = False) -> int:
    """The permission bits a new file (or folder) gets from the process's umask: 0644 (0755) under umask 022."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


def give_usual_permissions(path: Path) -> None:
    """Give `path` and, for a folder, everything under it the permissions of `usual_mode`.

    tempfile makes 0600 files and 0700 folders and safetensors writes 0600 files, whatever the umask;
    a run's outputs renamed out of those would be private to their owner, unlike the rest of its files.
    """
    file_mode, folder_mode = usual_mode(), usual_mode(folder=True)
    os.chmod(path, folder_mode if path.is_dir() else file_mode)
    if path.is_dir() and not path.is_symlink():
        for root, folders, files in os.walk(path):
            for name, mode in [*((n, folder_mode) for n in folders), *((n, file_mode) for n in files)]:
                if not os.path.islink(entry := os.path.join(root, name)):  # a link's target is not ours
                    os.chmod(entry, mode)


def check_output_file(path: str | Path, what: str = "--out") -> Path:
    """`path` as a Path, once sure a file can be written there: it is not a folder and no folder above it is an
    existing file (ValueError naming the obstacle otherwise), so a long job fails before it starts."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder: give the file to write, e.g. {path / 'scores.csv'}")
    check_output_folder(path.parent, f"{what} {path}: folder")
    return path


def check_output_folder(path: str | Path, what: str = "output folder") -> Path:
    """`path` as a Path, once sure it can be a folder to write into: neither it nor a folder above it is an
    existing file (ValueError naming that file otherwise)."""
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists():
            if part == path and not part.is_dir():
                raise ValueError(f"{what} {path} is a file, not a folder: give a folder path")
            if not part.is_dir():
                raise ValueError(f"{what} {path}: {part}, on its path, is a file, not a folder")
            break
    return path


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
        give_usual_permissions(Path(tmp))  # mkstemp creates 0600
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
    replaced by a rename, so readers see either the old or the new version, never a partial one. What
    moves into place gets the umask's usual permissions (`give_usual_permissions`).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(dir=out_dir, prefix=".saving-"))
    try:
        written = write(tmp_dir)
        give_usual_permissions(written)
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

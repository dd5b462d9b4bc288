"""The one-process reference of a launched command, run as each launched process runs (one CPU thread, so
that float roundings match), and a folder's files to compare."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .launch import run_one


def one_process(argv: list[str]) -> int:
    """`diffalign ARGV` in this process on one CPU thread, as under the tests' launcher (OMP_NUM_THREADS=1)."""
    threads, variable = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # `cpu_threads(auto)` then leaves torch's count alone
    torch.set_num_threads(1)
    try:
        return run_one(argv)
    finally:
        torch.set_num_threads(threads)
        if variable is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = variable


def folder_files(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file under `folder` but hidden ones (the jobs' records and status files) and those named in
    `skip`, by relative path, with its bytes."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(Path(folder).rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and path.name not in skip
    }

"""Resumable dataset building: a progress file and shard names shared by `diffalign pairs` and `relabel`.

The progress file (`progress.json` in the output folder, written atomically) holds the settings the
data is made with and the shards finished so far. A shard is written (atomically) before the progress
file names it, so after a crash a shard the progress file does not name is a leftover: `open_progress`
deletes it and its work is redone. A rerun with other settings is refused rather than mixing data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..files import atomic_write, atomic_write_text

PROGRESS_FILE = "progress.json"
SHARD_GLOB = "data/train-*.parquet"


def shard_name(index: int) -> str:
    """The relative path of shard `index`: `data/train-00007.parquet`."""
    return f"data/train-{index:05d}.parquet"


def open_progress(out: Path, settings: dict, overwrite: bool = False) -> dict:
    """The progress of the dataset in `out` made with `settings` (a fresh one when there is none).

    Raises a ValueError naming the setting that differs when `out` was made with other settings
    (unless `overwrite`, which starts over: every shard and the progress file are removed).
    Leftover shards that the progress file does not name are deleted.
    """
    path = out / PROGRESS_FILE
    state = None
    if path.is_file() and not overwrite:
        try:
            state = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}); delete it or pass --overwrite to start over") from error
        old = state.get("settings", {})
        differing = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if differing:
            key = differing[0]
            raise ValueError(
                f"{out} holds data made with other settings ({key}: {old.get(key)!r} there, {settings.get(key)!r} now"
                f"{'; also ' + ', '.join(differing[1:]) if differing[1:] else ''}): use another output folder, "
                "the same settings to resume, or --overwrite to start over"
            )
    elif not overwrite and any(out.glob(SHARD_GLOB)):
        raise ValueError(f"{out} already holds shards but no {PROGRESS_FILE}: use another folder or --overwrite")
    if state is None:
        state = {"settings": settings, "shards": []}
    named = {s["file"] for s in state["shards"]}
    for leftover in out.glob(SHARD_GLOB):
        if leftover.relative_to(out).as_posix() not in named:
            leftover.unlink()
    return state


def save_progress(out: Path, state: dict) -> None:
    """Write the progress file atomically."""
    atomic_write_text(out / PROGRESS_FILE, json.dumps(state, indent=1) + "\n")


def write_shard(out: Path, state: dict, table: Any, **record: Any) -> None:
    """Write `table` (a `datasets.Dataset`) atomically as the next shard, then name it in the progress file with
    `record` (its row count and whatever the job keeps per shard).

    A table without rows is recorded with `"file": None` and no file is written: readers such as
    `datasets.load_dataset(folder)` fail on a parquet file without a row group."""
    if len(table) == 0:
        state["shards"].append({"file": None, **record})
        save_progress(out, state)
        return
    import pyarrow.parquet as pq

    name = shard_name(len(state["shards"]))
    arrow = table.with_format("arrow")[:]  # keeps the features (image columns) in the schema metadata
    atomic_write(out / name, lambda file: pq.write_table(arrow, file))  # a failed write (a full disk) leaves nothing
    state["shards"].append({"file": name, **record})
    save_progress(out, state)


def to_ranges(indices: list[int]) -> list[list[int]]:
    """Sorted integers as inclusive [first, last] runs (compact for a progress file)."""
    runs: list[list[int]] = []
    for i in sorted(set(indices)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return runs


def from_ranges(runs: list[list[int]]) -> set[int]:
    """The integers of inclusive [first, last] runs."""
    return {i for first, last in runs for i in range(first, last + 1)}

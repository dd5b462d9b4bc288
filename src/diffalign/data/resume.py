"""Resumable dataset building: a progress file and shard names shared by `diffalign pairs` and `relabel`.

The progress file (`progress.json` in the output folder, written atomically) holds the settings the
data is made with and the shards finished so far. A shard is written (atomically) before the progress
file names it, so after a crash a shard the progress file does not name is a leftover: `open_progress`
deletes it and its work is redone. A rerun with other settings is refused rather than mixing data.

On several processes (`diffalign relabel` and `captions` under `accelerate launch`, see `diffalign.processes`),
shard n is chunk n of the job: the process that owns it writes the shard file, then a chunk record holding
what the progress file keeps of it (`sharded_job_state` / `write_shard_file` / `ChunkRecords.write`); a shard
with a record is done and survives `open_progress`. Once every process is done, the main process appends the
recorded shards to the progress file in shard order (`merge_recorded_shards`), so it reads as one process
writes it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..files import atomic_write, atomic_write_text
from ..processes import ChunkRecords, Processes, fingerprint, prepare_status, read_shared

PROGRESS_FILE = "progress.json"
SHARD_GLOB = "data/train-*.parquet"
RECORDS_DIR = ".chunks"  # the chunk records of shards not yet named in the progress file


def shard_name(index: int) -> str:
    """The relative path of shard `index`: `data/train-00007.parquet`."""
    return f"data/train-{index:05d}.parquet"


def open_progress(out: Path, settings: dict, overwrite: bool = False, records: ChunkRecords | None = None) -> dict:
    """The progress of the dataset in `out` made with `settings` (a fresh one when there is none).

    Raises a ValueError naming the setting that differs when `out` was made with other settings
    (unless `overwrite`, which starts over: every shard, chunk record and the progress file are removed).
    Leftover shards that neither the progress file names nor `records` hold a record of are deleted; a
    record of another job raises a ValueError naming it.
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
    if records is not None:
        if overwrite:
            records.clear()
        named |= {shard_name(chunk) for chunk in records.done()}
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
    state["shards"].append({"file": write_shard_file(out, len(state["shards"]), table), **record})
    save_progress(out, state)


def write_shard_file(out: Path, index: int, table: Any) -> str | None:
    """Write `table` (a `datasets.Dataset`) atomically as shard `index`; its relative path, or None for a table
    without rows, of which no file is written."""
    if len(table) == 0:
        return None
    import pyarrow.parquet as pq

    name = shard_name(index)
    arrow = table.with_format("arrow")[:]  # keeps the features (image columns) in the schema metadata
    atomic_write(out / name, lambda file: pq.write_table(arrow, file))  # a failed write (a full disk) leaves nothing
    return name


def read_progress(out: Path) -> dict:
    """The progress file of `out`, as the main process wrote it (`processes.read_shared`: a missing one says why)."""
    return read_shared(out / PROGRESS_FILE)


@contextmanager
def quiet_unless_main(processes: Processes) -> Iterator[None]:
    """Within the `with`, the progress bars of `datasets` (preparing a source) show on the main process only."""
    import datasets

    if processes.is_main or datasets.are_progress_bars_disabled():
        yield
        return
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.enable_progress_bars()


def shard_records(out: Path, settings: dict, rows: int, shard_size: int) -> ChunkRecords:
    """The chunk records of a dataset of `rows` source rows written `shard_size` rows a shard: shard n, source rows
    [n x shard_size, (n+1) x shard_size), is chunk n; the records carry the fingerprint of `settings`."""

    def describe(chunk: int) -> str:
        return f"shard {chunk} (source rows {chunk * shard_size}-{min((chunk + 1) * shard_size, rows) - 1})"

    return ChunkRecords(out / RECORDS_DIR, fingerprint(settings), math.ceil(rows / shard_size), describe)


def sharded_job_state(processes: Processes, out: Path, settings: dict, overwrite: bool,
                      records: ChunkRecords) -> tuple[dict, set[int]]:
    """Start a sharded dataset job on every process: the main process checks `settings` against the progress file
    (refusing a change, naming it) and the chunk records (refusing a foreign one or one whose shard file is
    missing), deletes leftovers and writes the progress file; then every process waits for it and returns the
    progress and the shards already done (named by the progress file or recorded)."""
    if processes.is_main:
        state = open_progress(out, settings, overwrite, records)
        save_progress(out, state)
        done = set(range(len(state["shards"]))) | records.done()  # before the others add any
        for chunk in done - set(range(len(state["shards"]))):
            _recorded_entry(out, records, chunk)  # refused now rather than at the merge
    prepare_status(processes, out)
    if not processes.is_main:
        state = read_progress(out)
        done = set(range(len(state["shards"]))) | records.done()
    return state, done


def recorded_shards(out: Path, state: dict, records: ChunkRecords, processes: Processes | None = None) -> list[dict]:
    """The entries of the shards after those the progress `state` names, from their chunk records, in shard order.

    A shard without a record (not computed, or written where this process cannot see it) or whose record names a
    file that is not there is a ValueError naming it; so is a record of another job."""
    present = records.done()
    entries = []
    for chunk in range(len(state["shards"]), records.chunks):
        if chunk not in present:
            raise records.missing(chunk, processes)
        entries.append(_recorded_entry(out, records, chunk))
    return entries


def _recorded_entry(out: Path, records: ChunkRecords, chunk: int) -> dict:
    """The progress entry of `chunk` from its record; a ValueError when the shard file it names is not there."""
    entry = json.loads(records.path(chunk).read_text())
    del entry["fingerprint"], entry["chunk"]
    if entry["file"] is not None and not (out / entry["file"]).is_file():
        raise ValueError(f"{records.path(chunk)} records {records.describe(chunk)} in {out / entry['file']}, which "
                         "is missing: delete the record and rerun the same command to compute the shard again")
    return entry


def merge_recorded_shards(out: Path, state: dict, entries: list[dict], records: ChunkRecords) -> None:
    """Name the recorded shards' `entries` (from `recorded_shards`) in the progress file after those it names,
    save it, and remove the records it now holds."""
    state["shards"].extend(entries)
    save_progress(out, state)
    records.clear()


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

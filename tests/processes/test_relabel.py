"""`diffalign relabel` on two processes: each scores its shards (r, r+2, ...), the main process merges them into
what one process writes (shards byte for byte, progress.json, the card up to timing); an undecodable image in
process 1's share is listed by the main process; a failed process's shards are redone by the rerun alone; a
missing or foreign chunk record and a changed setting are refused (one process of two simulated in-process)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from diffalign.feedback.relabel_dataset import RelabelJob, relabel_dataset
from diffalign.processes import ChunkRecords

from ..conftest import write_pairs
from .launch import Job, register, run_one
from .sharded import assert_same_dataset, simulated

BAD_ROW = 3  # in shard 1, process 1's


def _source(folder: Path) -> Path:
    """8 shapes-world pairs (one tie) whose row 3 has an undecodable jpg_0."""
    path = write_pairs(folder / "pairs.parquet", n=7, ties=1)
    rows = pq.read_table(path).to_pylist()
    rows[BAD_ROW]["jpg_0"] = b"not an image"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _argv(source: Path, out: Path) -> list[str]:
    return ["relabel", str(source), "--scorer", "shapes", "--flip", "--shard-size", "2", "--batch-size", "3",
            "--out", str(out)]


def build(folder: Path) -> list[Job]:
    source = _source(folder)
    return [
        Job("relabel-two", _argv(source, folder / "two")),  # with its progress bar
        Job("relabel-fault", _argv(source, folder / "fault") + ["--no-progress"],
            fault={"process": 1, "after": 0, "how": "raise"}),
        Job("relabel-fault-rerun", _argv(source, folder / "fault") + ["--no-progress"]),
    ]


register("relabel", build)


@pytest.fixture(scope="module")
def one_process(launched, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("relabel-one") / "out"
    assert run_one(_argv(launched.folders["relabel"] / "pairs.parquet", out) + ["--no-progress"]) == 1  # row 3
    return out


def test_two_processes_write_what_one_writes(launched, one_process):
    main = launched.main
    assert main.rc("relabel-two") == [1, 0], main.describe("relabel-two")  # 1: a row left out
    assert main.records("relabel-two") == [2, 2]  # shards 0, 2 and 1, 3
    assert_same_dataset(launched.folders["relabel"] / "two", one_process)
    err, out = main.err("relabel-two", 0), (main.folder / "relabel-two.0.out").read_text()
    assert "1 row(s) left out" in err and f"row {BAD_ROW} jpg_0" in err and "8/8" in err  # one bar, global count
    assert "7 pairs written, 1 left out" in out and "4 shard(s) and a dataset card" in out
    assert main.err("relabel-two", 1) == "" and (main.folder / "relabel-two.1.out").read_text() == ""


def test_a_failed_process_is_reported_and_the_rerun_redoes_only_its_shards(launched, one_process):
    main = launched.main
    assert 0 not in main.rc("relabel-fault") and None not in main.rc("relabel-fault"), main.describe("relabel-fault")
    assert "injected fault" in main.err("relabel-fault", 1)
    assert "process 1 of 2 failed: RuntimeError: injected fault" in main.err("relabel-fault", 0)
    assert main.records("relabel-fault") == [2, 0]
    assert main.rc("relabel-fault-rerun") == [1, 0], main.describe("relabel-fault-rerun")
    assert main.records("relabel-fault-rerun") == [0, 2]
    assert_same_dataset(launched.folders["relabel"] / "fault", one_process)


def _job(source: Path, out: Path, **changes) -> RelabelJob:
    return RelabelJob(**{"source": str(source), "out": out, "scorers": ["shapes"], "labels": "scorer", "shard_size": 2,
                         "batch_size": 3, "progress": False, **changes})


def test_the_merge_refuses_missing_and_foreign_records_and_changed_settings(tmp_path):
    source = _source(tmp_path)
    reference = relabel_dataset(_job(source, tmp_path / "one"))
    out = tmp_path / "two"
    with pytest.raises(ValueError, match=r"no record of shard 1 \(source rows 2-3\) "
                                        r"\(chunk 1 of \d+, the share of process 1 of 2\): it "
                                         r"was not computed \(rerun the same command to compute it\)"):
        relabel_dataset(_job(source, out), simulated(0, out, "relabel"))  # the other process did not do its share
    with pytest.raises(ValueError, match=r"holds data made with other settings \(shard_size: 2 there, 4 now\)"):
        relabel_dataset(_job(source, out, shard_size=4))
    assert relabel_dataset(_job(source, out), simulated(1, out, "relabel")) is None  # shards 1 and 3, no merge
    merged = relabel_dataset(_job(source, out), simulated(0, out, "relabel"))  # nothing left to score: merges
    assert_same_dataset(out, tmp_path / "one")
    assert merged.totals == reference.totals and merged.errors == reference.errors and len(merged.errors) == 1

    ChunkRecords(out / ".chunks", "0123456789abcdef", 4).write(1, {"file": None})
    with pytest.raises(ValueError, match=r"chunk-000001.json: a foreign chunk record, written by a job with other "
                                         r"settings \(fingerprint 0123456789abcdef, this job's [0-9a-f]{16}\)"):
        relabel_dataset(_job(source, out))
    shutil.rmtree(out / ".chunks")
    with pytest.raises(ValueError, match=r"other settings \(tie_tolerance: 0.0 there, 0.1 now\)"):
        relabel_dataset(_job(source, out, tie_tolerance=0.1))

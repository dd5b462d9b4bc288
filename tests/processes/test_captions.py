"""`diffalign captions` on two processes: each captions its shards (r, r+2, ...) with the shapes captioner and
perturber (hybrid: both), the main process merges them into what one process writes (shards byte for byte,
progress.json, the card up to timing); an undecodable image in process 1's share is listed by the main process; a
failed process's shards are redone by the rerun alone; a missing or foreign chunk record and a changed setting are
refused (one process of two simulated in-process)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from diffalign.feedback.caption_dataset import CaptionJob, caption_dataset
from diffalign.processes import ChunkRecords

from ..conftest import write_pairs
from .launch import Job, register, run_one
from .sharded import assert_same_dataset, simulated

BAD_ROW = 3  # in shard 1, process 1's


def _source(folder: Path) -> Path:
    """8 shapes-world pairs (one tie) whose row 3 has an undecodable jpg_1."""
    path = write_pairs(folder / "pairs.parquet", n=7, ties=1, seed=1)
    rows = pq.read_table(path).to_pylist()
    rows[BAD_ROW]["jpg_1"] = b"not an image"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _argv(source: Path, out: Path) -> list[str]:
    return ["captions", str(source), "--strategy", "hybrid", "--captioner", "shapes", "--perturber", "shapes",
            "--diversity", "strong", "--seed", "3", "--shard-size", "2", "--batch-size", "1", "--out", str(out)]


def build(folder: Path) -> list[Job]:
    source = _source(folder)
    return [
        Job("captions-two", _argv(source, folder / "two")),  # with its progress bar
        Job("captions-fault", _argv(source, folder / "fault") + ["--no-progress"],
            fault={"process": 1, "after": 1, "how": "raise"}),
        Job("captions-fault-rerun", _argv(source, folder / "fault") + ["--no-progress"]),
    ]


register("captions", build)


@pytest.fixture(scope="module")
def one_process(launched, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("captions-one") / "out"
    assert run_one(_argv(launched.folders["captions"] / "pairs.parquet", out) + ["--no-progress"]) == 1  # row 3
    return out


def test_two_processes_write_what_one_writes(launched, one_process):
    main = launched.main
    assert main.rc("captions-two") == [1, 0], main.describe("captions-two")  # 1: a row left out
    assert main.records("captions-two") == [2, 2]  # shards 0, 2 and 1, 3
    assert_same_dataset(launched.folders["captions"] / "two", one_process)
    err, out = main.err("captions-two", 0), (main.folder / "captions-two.0.out").read_text()
    assert "1 row(s) left out" in err and f"row {BAD_ROW} jpg_1" in err and "8/8" in err  # one bar, global count
    assert "7 pairs written with caption_0/caption_1 (hybrid) in 4 shard(s)" in out
    assert main.err("captions-two", 1) == "" and (main.folder / "captions-two.1.out").read_text() == ""


def test_a_failed_process_is_reported_and_the_rerun_redoes_only_its_shards(launched, one_process):
    main = launched.main
    assert 0 not in main.rc("captions-fault") and None not in main.rc("captions-fault"), main.describe("captions-fault")
    assert "process 1 of 2 failed: RuntimeError: injected fault" in main.err("captions-fault", 0)
    assert main.records("captions-fault") == [2, 1]  # process 1 failed before recording shard 3
    assert main.rc("captions-fault-rerun") == [1, 0], main.describe("captions-fault-rerun")
    assert main.records("captions-fault-rerun") == [0, 1]
    assert_same_dataset(launched.folders["captions"] / "fault", one_process)


def _job(source: Path, out: Path, **changes) -> CaptionJob:
    return CaptionJob(**{"source": str(source), "out": out, "strategy": "hybrid", "captioner": "shapes",
                         "perturber": "shapes", "diversity": "strong", "seed": 3, "shard_size": 2, "batch_size": 1,
                         "progress": False, **changes})


def test_the_merge_refuses_missing_and_foreign_records_and_changed_settings(tmp_path):
    source = _source(tmp_path)
    reference = caption_dataset(_job(source, tmp_path / "one"))
    out = tmp_path / "two"
    with pytest.raises(ValueError, match=r"no record of shard 1 \(source rows 2-3\) "
                                        r"\(chunk 1 of \d+, the share of process 1 of 2\)"):
        caption_dataset(_job(source, out), simulated(0, out, "captions"))  # the other process did not do its share
    assert caption_dataset(_job(source, out), simulated(1, out, "captions")) is None  # shards 1 and 3, no merge
    (out / ".chunks" / "chunk-000003.json").unlink()  # as if process 1 had died before recording shard 3
    with pytest.raises(ValueError, match=r"no record of shard 3 \(source rows 6-7\) "
                                        r"\(chunk 3 of \d+, the share of process 1 of 2\): it "
                                         r"was not computed \(rerun the same command to compute it\)"):
        caption_dataset(_job(source, out), simulated(0, out, "captions"))
    with pytest.raises(ValueError, match=r"holds data made with other settings \(seed: 3 there, 4 now\)"):
        caption_dataset(_job(source, out, seed=4))
    merged = caption_dataset(_job(source, out))  # one process resumes: shard 3 only
    assert_same_dataset(out, tmp_path / "one")
    assert merged.rows == reference.rows == 7 and merged.errors == reference.errors and len(merged.errors) == 1

    ChunkRecords(out / ".chunks", "0123456789abcdef", 4).write(1, {"file": None})
    with pytest.raises(ValueError, match=r"chunk-000001.json: a foreign chunk record, written by a job with other "
                                         r"settings \(fingerprint 0123456789abcdef, this job's [0-9a-f]{16}\)"):
        caption_dataset(_job(source, out))
    shutil.rmtree(out / ".chunks")
    with pytest.raises(ValueError, match=r"other settings \(diversity: 80 there, 40 now\)"):
        caption_dataset(_job(source, out, diversity="weak"))

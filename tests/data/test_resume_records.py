"""`data.resume` with chunk records (a sharded job on several processes): a recorded shard survives
`open_progress`, `--overwrite` clears the records, foreign or missing records are refused with the file named,
and the main process merges the recorded shards after those the progress file names."""

from __future__ import annotations

import json

import datasets
import pytest

from diffalign.data.resume import (PROGRESS_FILE, merge_recorded_shards, open_progress, read_progress,
                                   recorded_shards, save_progress, shard_name, shard_records, sharded_job_state,
                                   write_shard_file)
from diffalign.processes import Processes

SETTINGS = {"source": "test", "shard_size": 2}


def _table(n: int) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"caption": [f"c{i}" for i in range(n)]})


def _record(records, out, shard: int, n: int) -> dict:
    entry = {"file": write_shard_file(out, shard, _table(n)), "rows": n, "source_rows": [2 * shard, 2 * shard + 2]}
    records.write(shard, entry)
    return entry


def test_a_recorded_shard_survives_open_progress_and_is_merged_in_shard_order(tmp_path):
    out = tmp_path / "out"
    records = shard_records(out, SETTINGS, rows=7, shard_size=2)
    assert records.chunks == 4 and records.describe(3) == "shard 3 (source rows 6-6)"
    state = open_progress(out, SETTINGS, records=records)
    save_progress(out, state)
    entries = {shard: _record(records, out, shard, n) for shard, n in ((2, 2), (1, 0), (0, 2))}
    write_shard_file(out, 3, _table(1))  # written, but its process died before recording it: a leftover
    state = open_progress(out, SETTINGS, records=records)
    assert sorted(p.name for p in (out / "data").iterdir()) == ["train-00000.parquet", "train-00002.parquet"]
    assert state["shards"] == [] and records.done() == {0, 1, 2}

    with pytest.raises(ValueError, match=r"no record of shard 3 \(source rows 6-6\) "
                                        r"\(chunk 3 of \d+, the share of process 1 of 2\): "
                                         "it was not computed"):
        recorded_shards(out, state, records, Processes(index=0, count=2))
    entries[3] = _record(records, out, 3, 1)
    merge_recorded_shards(out, state, recorded_shards(out, state, records), records)
    assert read_progress(out)["shards"] == [entries[n] for n in range(4)]
    assert [s["file"] for s in state["shards"]] == [shard_name(0), None, shard_name(2), shard_name(3)]
    assert not records.folder.exists() and len(datasets.load_dataset(str(out), split="train")) == 5


def test_shards_named_by_an_older_progress_file_need_no_record(tmp_path):
    out = tmp_path / "out"
    records = shard_records(out, SETTINGS, rows=4, shard_size=2)
    state = open_progress(out, SETTINGS, records=records)
    state["shards"].append({"file": write_shard_file(out, 0, _table(2)), "rows": 2})  # as one process wrote it
    save_progress(out, state)
    entry = _record(records, out, 1, 2)
    state = open_progress(out, SETTINGS, records=records)
    merge_recorded_shards(out, state, recorded_shards(out, state, records), records)
    assert [s["file"] for s in read_progress(out)["shards"]] == [shard_name(0), shard_name(1)]
    assert read_progress(out)["shards"][1] == entry


def test_overwrite_clears_the_records_and_their_shards(tmp_path):
    out = tmp_path / "out"
    records = shard_records(out, SETTINGS, rows=4, shard_size=2)
    save_progress(out, open_progress(out, SETTINGS, records=records))
    _record(records, out, 1, 2)
    state = open_progress(out, SETTINGS, overwrite=True, records=records)
    assert state["shards"] == [] and records.done() == set() and not list(out.glob("data/*.parquet"))


def test_a_foreign_or_dangling_record_is_refused_naming_its_file(tmp_path):
    out = tmp_path / "out"
    records = shard_records(out, SETTINGS, rows=4, shard_size=2)
    save_progress(out, open_progress(out, SETTINGS, records=records))
    _record(shard_records(out, {**SETTINGS, "source": "another"}, rows=4, shard_size=2), out, 0, 2)
    with pytest.raises(ValueError, match=r"chunk-000000.json: a foreign chunk record, written by a job with other "
                                         r"settings .*delete .*\.chunks to start over"):
        open_progress(out, SETTINGS, records=records)

    out = tmp_path / "dangling"
    records = shard_records(out, SETTINGS, rows=4, shard_size=2)
    state = open_progress(out, SETTINGS, records=records)
    save_progress(out, state)
    _record(records, out, 0, 2)
    _record(records, out, 1, 2)
    (out / shard_name(1)).unlink()
    message = (r"chunk-000001.json records shard 1 \(source rows 2-3\) in .*train-00001.parquet, which is missing: "
               r"delete the record and rerun the same command")
    with pytest.raises(ValueError, match=message):
        recorded_shards(out, state, records)
    with pytest.raises(ValueError, match=message):  # the next run refuses it before computing anything
        sharded_job_state(Processes(), out, SETTINGS, False, records)
    records.path(1).unlink()
    assert sharded_job_state(Processes(), out, SETTINGS, False, records)[1] == {0}


def test_a_process_that_cannot_see_the_progress_file_says_why(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{PROGRESS_FILE} is missing: the main process writes it before the "
                                                "others start.*filesystem every node shares"):
        read_progress(tmp_path)
    (tmp_path / PROGRESS_FILE).write_text(json.dumps({"settings": SETTINGS, "shards": []}))
    assert read_progress(tmp_path)["shards"] == []

"""The split every data job shares (`diffalign.processes`): shares by index, per-chunk records, the progress of
all processes and the propagation of a failure; the processes are simulated by threads in this process."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from diffalign.processes import (
    STATUS_DIR,
    ChunkRecords,
    ProcessFailed,
    Processes,
    current_processes,
    fingerprint,
    job_progress,
    prepare_status,
)


def test_shares_are_disjoint_cover_every_chunk_and_depend_only_on_the_index():
    for count in (1, 2, 3, 5):
        shares = [list(Processes(i, count).share(11)) for i in range(count)]
        assert sorted(c for share in shares for c in share) == list(range(11))
        assert all(Processes(0, count).owner(c) == i for i, share in enumerate(shares) for c in share)
    assert list(Processes(1, 3).share(8)) == [1, 4, 7]


def test_without_a_launcher_there_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    processes = current_processes()
    assert (processes.index, processes.count, processes.is_main, processes.many) == (0, 1, True, False)
    processes.wait()  # nothing to wait for


def test_each_process_takes_its_own_gpu_and_a_numbered_one_is_refused(monkeypatch):
    assert Processes().device(None) is None and Processes().device("cuda:1") == "cuda:1"
    second = Processes(index=3, count=4, local_index=1)
    assert second.device("cuda") == "cuda:1" and second.device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert second.device(None) == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert second.device(None) == "cpu"
    with pytest.raises(ValueError, match=r"--device cuda:0: with 4 processes each process takes its own GPU"):
        second.device("cuda:0")


def test_records_are_read_in_chunk_order_and_a_missing_one_is_named_with_its_process(tmp_path):
    records = ChunkRecords(tmp_path / "parts", fingerprint({"steps": 2}), 4, lambda c: f"rows {10 * c}-{10 * c + 9}")
    for chunk in (3, 0, 2):
        records.write(chunk, {"rows": chunk})
    assert records.done() == {0, 2, 3}
    with pytest.raises(ValueError) as missing:
        records.read_all(Processes(0, 2))
    assert str(missing.value).startswith(
        f"{tmp_path / 'parts'}: no record of rows 10-19 (chunk 1 of 4, the share of process 1 of 2): it was not "
        "computed (rerun the same command to compute it)")
    records.write(1, {"rows": 1})
    assert [r["rows"] for r in records.read_all()] == [0, 1, 2, 3]
    records.clear()
    assert records.done() == set()


def test_a_record_of_another_job_or_chunk_count_is_refused(tmp_path):
    ChunkRecords(tmp_path, fingerprint({"steps": 3}), 4).write(1, {})
    with pytest.raises(ValueError, match=r"chunk-000001.json: a foreign chunk record, written by a job with other "
                                         r"settings \(fingerprint \w+, this job's \w+\); this folder holds another job's"):
        ChunkRecords(tmp_path, fingerprint({"steps": 2}), 4).done()
    ChunkRecords(tmp_path / "more", "f", 8).write(6, {})
    with pytest.raises(ValueError, match="chunk 6 is not one of this job's 4 chunks"):
        ChunkRecords(tmp_path / "more", "f", 4).read_all()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "chunk-000000.json").write_text("{not json")
    with pytest.raises(ValueError, match="chunk-000000.json: not a chunk record of diffalign"):
        ChunkRecords(tmp_path / "bad", "f", 1).done()


def _simulate(tmp_path, work, count: int = 2) -> list:
    """Run `work(processes)` for each of `count` simulated processes in its own thread; their outcomes."""
    outcomes: list = [None] * count

    def run(index: int) -> None:
        try:
            outcomes[index] = work(Processes(index, count))
        except BaseException as error:  # noqa: BLE001 - the test looks at it
            outcomes[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return outcomes


def test_the_main_bar_counts_every_process_and_all_wait_for_the_last(tmp_path):
    prepare_status(Processes(0, 2), tmp_path)

    def work(processes: Processes):
        with job_progress(processes, tmp_path, "draw", total=10, initial=1, enabled=False) as progress:
            for chunk in processes.share(9):
                progress.update(1)
            if processes.index == 1:
                threading.Event().wait(0.5)  # the slower process: the main one must wait for it
        return progress.bar.n

    # 1 done before + the main process's 5 + the slower one's 4: the main process waited for its last count
    assert _simulate(tmp_path, work) == [10, 10]
    assert not (tmp_path / STATUS_DIR).exists()  # once all have finished, the main process removes the status files


def test_a_failure_in_one_process_is_raised_in_the_others_with_its_message(tmp_path):
    def work(processes: Processes):
        with job_progress(processes, tmp_path, "score", total=4, enabled=False) as progress:
            progress.update(1)
            if processes.index == 1:
                raise ValueError("images/3.png: cannot be decoded")

    main, other = _simulate(tmp_path, work)
    assert isinstance(other, ValueError)
    assert isinstance(main, ProcessFailed)
    assert str(main) == ("process 1 of 2 failed: ValueError: images/3.png: cannot be decoded (what the processes "
                         "finished is kept: once the cause is fixed, the same command resumes)")


def test_status_files_of_an_earlier_launch_are_cleared_before_a_job_starts(tmp_path):
    (tmp_path / STATUS_DIR).mkdir()
    (tmp_path / STATUS_DIR / "draw-00001.json").write_text(json.dumps({"done": 9, "state": "finished", "error": None}))
    prepare_status(Processes(0, 2), tmp_path)
    assert not (tmp_path / STATUS_DIR).exists()


def test_under_a_launcher_without_cuda_accelerate_is_told_the_processes_run_on_the_cpu(monkeypatch):
    import accelerate

    seen = {}

    class State:
        process_index, num_processes, local_process_index = 1, 2, 1

        def __init__(self, **kwargs):
            seen.update(kwargs)

        def wait_for_everyone(self):
            pass

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(accelerate, "PartialState", State)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    processes = current_processes()
    assert seen == {"cpu": True}  # without it accelerate leaves each CPU process alone: 0 of 1, the whole job each
    assert (processes.index, processes.count, processes.local_index) == (1, 2, 1)

"""`diffalign generate` on 2 processes: the folder one process writes, byte for byte; a job killed in one
process resumes with the same command and draws only the batches it had not recorded."""

from __future__ import annotations

import pytest

from .launch import ROOT, Job, register
from .single import folder_files, one_process

# 4 prompts x 2 seeds in batches of 2: batches 0 and 2 for process 0, 1 and 3 for process 1
ARGV = ["generate", str(ROOT / "assets" / "tiny-sd"), "--max-prompts", "4", "--seeds", "2", "--steps", "2",
        "--batch-size", "2", "--no-progress"]
BATCHES = 4


def build(folder):
    return [
        Job("generate-two", [*ARGV, "--out", str(folder / "two")]),
        # process 1 records its first batch, draws its second and dies before recording it: the launch ends
        Job("generate-killed", [*ARGV, "--out", str(folder / "killed")], {"process": 1, "after": 1, "how": "exit"}),
        Job("generate-resumed", [*ARGV, "--out", str(folder / "killed")]),
    ]


register("generate", build)


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    """The folder one process writes."""
    out = tmp_path_factory.mktemp("generate-one") / "one"
    assert one_process([*ARGV, "--out", str(out)]) == 0
    return folder_files(out)


def test_two_processes_write_the_folder_one_process_writes(launched, one):
    main = launched.main
    assert main.rc("generate-two") == [0, 0], main.describe("generate-two")
    assert main.records("generate-two") == [2, 2]
    two = launched.folders["generate"] / "two"
    assert folder_files(two) == one  # the PNGs, metadata.jsonl (in image order) and generation.json
    assert not (two / ".batches").exists()  # the records are merged, then removed
    assert "8 images in" in (main.folder / "generate-two.0.out").read_text()
    assert (main.folder / "generate-two.1.out").read_text() == ""  # the summary is the main process's


def test_a_job_killed_in_one_process_resumes_drawing_only_what_it_had_not_recorded(launched, one):
    killed = launched.killed["generate-killed"]
    assert killed.returncode != 0 and killed.rc("generate-killed")[1] is None, killed.stderr[-2000:]
    main = launched.main
    assert main.rc("generate-resumed") == [0, 0], main.describe("generate-resumed")
    drawn = 2 * sum(main.records("generate-resumed"))  # 2 images a batch
    # process 1 recorded batch 1 before it died (process 0 perhaps batches 0 and 2, by then): the recorded ones
    # are kept, not drawn again; batch 3, drawn but not recorded, is drawn again
    assert 2 <= drawn <= 6
    out = (main.folder / "generate-resumed.0.out").read_text()
    folder = launched.folders["generate"] / "killed"
    assert f"8 images in {folder} ({drawn} drawn now, {8 - drawn} already there)" in out
    assert folder_files(folder) == one

"""`diffalign pairs` on 2 processes: the shards, progress.json and card one process writes; a process failing
between its calls fails the job in both, and the same command then draws only the prompts it left."""

from __future__ import annotations

import json
import re

import pytest

from .launch import ROOT, Job, register
from .single import one_process

PROMPTS = ["a red circle on a blue background", "a small green square on a white background",
           "a large yellow triangle on a black background", "a blue circle on a white background",
           "a small red square on a black background", "a green triangle on a blue background",
           "a large blue square on a white background", "a yellow circle on a black background"]


def argv(folder, out: str) -> list[str]:
    """8 prompts, 2 images each, 2 prompts a call: chunks 0-3, process 1 drawing chunks 1 and 3; shards of 2 rows."""
    return ["pairs", "--prompts", str(folder / "prompts.txt"), "--model", str(ROOT / "assets" / "tiny-sd"),
            "--scorer", "shapes", "--k", "2", "--steps", "2", "--batch-size", "4", "--shard-size", "2",
            "--device", "cpu", "--no-progress", "--out", str(folder / out)]


def build(folder):
    (folder / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return [
        Job("pairs-two", argv(folder, "two")),
        # process 1 writes chunk 1's parts, then fails before its record, so it never draws chunk 3
        Job("pairs-raise", argv(folder, "raised"), {"process": 1, "after": 0, "how": "raise"}),
        Job("pairs-rerun", argv(folder, "raised")),
    ]


register("pairs", build)


def outputs(out) -> dict[str, object]:
    """The shards' bytes, progress.json, and the card without its date, command line and timing."""
    card = (out / "README.md").read_text()
    card = re.sub(r'"(date|seconds_this_run)": [^\n]*\n', "", re.sub(r"## Command\n\n```\n[^`]*```\n", "", card))
    files = {p.name: p.read_bytes() for p in sorted((out / "data").iterdir())}
    return {"shards": files, "progress": json.loads((out / "progress.json").read_text()), "card": card}


@pytest.fixture(scope="module")
def one(launched, tmp_path_factory):
    """What one process writes, on one CPU thread as each launched process runs."""
    out = tmp_path_factory.mktemp("pairs-one")
    assert one_process(argv(launched.folders["pairs"], str(out / "one"))) == 0
    return outputs(out / "one")


def test_two_processes_write_the_pairs_one_process_writes(launched, one):
    main = launched.main
    assert main.rc("pairs-two") == [0, 0], main.describe("pairs-two")
    assert main.records("pairs-two") == [2, 2]
    two = launched.folders["pairs"] / "two"
    assert outputs(two) == one and len(one["shards"]) >= 2
    assert one["progress"]["totals"]["prompts"] == 8 and not (two / ".pending").exists()
    assert "8 prompt(s) done (8 in this run)" in (main.folder / "pairs-two.0.out").read_text()
    assert (main.folder / "pairs-two.1.out").read_text() == ""  # the summary is the main process's


def test_a_failed_process_fails_the_job_and_the_rerun_draws_only_the_prompts_it_left(launched, one):
    main = launched.main
    assert main.rc("pairs-raise")[1] == 1 and main.rc("pairs-raise")[0] != 0, main.describe("pairs-raise")
    assert "injected fault" in main.err("pairs-raise", 1)
    assert "process 1 of 2 failed: RuntimeError: injected fault" in main.err("pairs-raise", 0)
    assert main.records("pairs-raise") == [2, 0]
    assert main.rc("pairs-rerun") == [0, 0], main.describe("pairs-rerun")
    assert main.records("pairs-rerun") == [0, 1]  # chunk 3 (prompts 6-7) only: chunk 1's parts were written
    assert "8 prompt(s) done (2 in this run)" in (main.folder / "pairs-rerun.0.out").read_text()
    assert outputs(launched.folders["pairs"] / "raised") == one

"""Helpers for the sharded dataset jobs (`relabel`, `captions`): the same dataset on disk, and one process of two
simulated in this process (the other reported finished through its status file)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from diffalign.processes import STATUS_DIR, Processes

TIMING = re.compile(r'^\s*"(date|seconds_this_run)": .*\n', re.MULTILINE)
COMMAND = re.compile(r"## Command\n\n```\n.*?\n```\n", re.DOTALL)


def card_without_timing(folder: Path) -> str:
    """The dataset card of `folder` without its date, its run's seconds and the command line (the test's argv)."""
    return TIMING.sub("", COMMAND.sub("", (folder / "README.md").read_text()))


def assert_same_dataset(folder: Path, reference: Path) -> None:
    """The shards of `folder` are `reference`'s byte for byte, its progress file is equal and its card is equal up
    to timing; no chunk record is left."""
    shards = sorted(p.relative_to(folder).as_posix() for p in folder.glob("data/*"))
    assert shards == sorted(p.relative_to(reference).as_posix() for p in reference.glob("data/*"))
    for name in shards:
        assert (folder / name).read_bytes() == (reference / name).read_bytes(), name
    assert json.loads((folder / "progress.json").read_text()) == json.loads((reference / "progress.json").read_text())
    assert card_without_timing(folder) == card_without_timing(reference)
    assert not (folder / ".chunks").exists()


def simulated(index: int, out: Path, phase: str) -> Processes:
    """Process `index` of 2 whose barrier (the wait after the main process's start) reports the other process
    finished, so the job runs its own share alone and goes on as if the other had done its share."""
    other = 1 - index

    def barrier() -> None:
        (out / STATUS_DIR).mkdir(parents=True, exist_ok=True)
        (out / STATUS_DIR / f"{phase}-{other:05d}.json").write_text(
            json.dumps({"done": 0, "state": "finished", "error": None}))

    return Processes(index=index, count=2, barrier=barrier)

"""The commands of tests/processes/test_*.py launched together: each module registers the jobs it needs
(`launch.register`), and the first test that asks for `launched` runs them all in one 2-process launch (plus one
launch per job with a killing fault, which ends its launch), so the start-up is paid once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from .launch import BUILDERS, Launch, launch


@dataclass
class Launched:
    """The shared launch and the killed launches, by the name of the job killed."""

    main: Launch
    killed: dict[str, Launch]
    folders: dict[str, Path]


@pytest.fixture(scope="session")
def launched(tmp_path_factory) -> Launched:
    root = tmp_path_factory.mktemp("launched")
    folders, jobs = {}, []
    for name, build in BUILDERS.items():
        folders[name] = root / name
        folders[name].mkdir()
        jobs += build(folders[name])
    killed = {}
    for job in [j for j in jobs if j.fault and j.fault["how"] == "exit"]:
        killed[job.name] = launch([job], root / f"launch-{job.name}")
    main = launch([j for j in jobs if not (j.fault and j.fault["how"] == "exit")], root / "launch")
    return Launched(main, killed, folders)

"""Launching `diffalign` commands on several processes for the tests: `accelerate launch --multi_gpu` (torchrun; gloo without GPUs), each
process single-threaded, every job of a list run in turn by `driver.py` (one launch pays the start-up once)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("driver.py")


@dataclass
class Job:
    """One command for the launch: `diffalign ARGV`, optionally with a fault in one process (see driver.py)."""

    name: str
    argv: list[str]
    fault: dict | None = None


@dataclass
class Launch:
    """What a launch did: its exit status and output, and per process and job the driver's results."""

    returncode: int
    stdout: str
    stderr: str
    folder: Path
    results: list[dict] = field(default_factory=list)  # per process: {job name: {"rc", "records", "seconds"}}

    def rc(self, name: str) -> list[int | None]:
        """The exit status of job `name` in each process (None: the process never finished it)."""
        return [r.get(name, {}).get("rc") for r in self.results]

    def records(self, name: str) -> list[int]:
        """The chunk records job `name` wrote in each process."""
        return [r.get(name, {}).get("records", 0) for r in self.results]

    def err(self, name: str, rank: int = 0) -> str:
        """What job `name` printed on stderr in process `rank`."""
        path = self.folder / f"{name}.{rank}.err"
        return path.read_text() if path.is_file() else ""

    def describe(self, name: str) -> str:
        """Job `name`'s status and stderr in every process, for assertion messages."""
        return "\n".join(f"process {r}: rc {rc}\n{self.err(name, r)[-2000:]}" for r, rc in enumerate(self.rc(name)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(jobs: list[Job], folder: Path, processes: int = 2, timeout: float = 600) -> Launch:
    """Run `jobs` in turn on `processes` CPU processes under `accelerate launch`; the launch's own failure (a
    process killed by a fault) is returned, not raised."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "jobs.json").write_text(json.dumps([asdict(j) for j in jobs], indent=1))
    # --cpu would start one process (accelerate's CPU launcher needs MPI for more); --multi_gpu runs torchrun, which
    # starts them all without a GPU
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), str(DRIVER), str(folder / "jobs.json"), str(folder)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    results = []
    for rank in range(processes):
        path = folder / f"results.{rank}.json"
        results.append(json.loads(path.read_text()) if path.is_file() else {})
    return Launch(done.returncode, done.stdout, done.stderr, folder, results)


BUILDERS: dict[str, Callable[[Path], list[Job]]] = {}


def register(name: str, build: Callable[[Path], list[Job]]) -> None:
    """Add the jobs `build(folder)` makes (in a fresh folder of its own) to the launch shared by the tests of
    tests/processes (see conftest.py); call it at module level."""
    BUILDERS[name] = build


def run_one(argv: list[str]) -> int:
    """`diffalign ARGV` in this process (one process, no launcher), its exit status."""
    from diffalign.cli.main import main

    return main(argv)

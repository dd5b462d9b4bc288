"""Data and evaluation jobs on many processes: disjoint shares by index, per-chunk records, one progress bar.

Started under a distributed launcher (`accelerate launch --num_processes N`, `torchrun`, several nodes as
accelerate does it), `diffalign generate`, `eval`, `score`, `relabel`, `captions`, `pairs` and `cache` split
their work the same way:

- the work is a list of chunks (a batch of images, a shard of rows...), numbered from 0; process r of N
  takes chunks r, r + N, r + 2N... (`Processes.share`), so the split depends only on the chunk index, never
  on timing, and a chunk is computed exactly as one process computes it;
- each process writes its chunks' outputs, then a small record of the chunk (`ChunkRecords`, atomically,
  carrying the job's fingerprint): a chunk with a record is done, so a killed job rerun with the same
  command (on any number of processes) redoes only the chunks without one;
- each process reports its count in `STATUS_DIR` (`JobProgress`); the main process shows one progress bar
  with the global count, and every process waits until all have finished (a failed process's error is
  raised by the others), after which the main process merges the chunks in chunk order. The output of N
  processes is therefore the output of one.

Only the process index and count come from the launcher (through accelerate's `PartialState`, which joins
the process group: NCCL on GPUs, gloo on CPUs); the processes meet through files, so the output folder must
be on a filesystem every process sees (on several nodes, a shared one). A process that dies is not waited
for forever: the launchers stop every process of a job when one of them fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .files import atomic_write_text

STATUS_DIR = ".processes"
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Processes:
    """Where this process stands among the processes of a job: its index, their count, its local index (its
    GPU on its node), and how to wait for all of them (a barrier; nothing to wait for with one process)."""

    index: int = 0
    count: int = 1
    local_index: int = 0
    barrier: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    @property
    def is_main(self) -> bool:
        """Whether this is the process that checks settings, merges the chunks and prints the summary."""
        return self.index == 0

    @property
    def many(self) -> bool:
        """Whether the job runs on more than one process."""
        return self.count > 1

    def share(self, chunks: int) -> range:
        """The chunks of `range(chunks)` this process computes: index, index + count, ..."""
        return range(self.index, chunks, self.count)

    def owner(self, chunk: int) -> int:
        """The index of the process that computes `chunk`."""
        return chunk % self.count

    def wait(self) -> None:
        """Return once every process has called `wait` (a barrier)."""
        if self.many and self.barrier is not None:
            self.barrier()

    def device(self, requested: str | None) -> str | None:
        """The device this process runs on: with several processes, `cuda` (or no choice, when CUDA is there)
        becomes this process's own GPU `cuda:LOCAL_INDEX`; a numbered GPU is refused (every process would use
        it). With one process, `requested` unchanged (None: the job's default)."""
        if not self.many:
            return requested
        if requested is None:
            import torch

            requested = "cuda" if torch.cuda.is_available() else "cpu"
        if requested == "cuda":
            return f"cuda:{self.local_index}"
        if requested.startswith("cuda:"):
            raise ValueError(
                f"--device {requested}: with {self.count} processes each process takes its own GPU "
                f"(cuda:LOCAL_RANK); give --device cuda, or leave --device out"
            )
        return requested

    def __str__(self) -> str:
        return f"process {self.index} of {self.count}"


def current_processes() -> Processes:
    """This process's place in a distributed launch (`WORLD_SIZE` > 1, as accelerate launch and torchrun set
    it), read through accelerate's `PartialState`; otherwise the only process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes()
    import torch
    from accelerate import PartialState

    # without CUDA, accelerate joins the processes (gloo) only when told the job runs on the CPU; otherwise each
    # process would see itself as the only one and do the whole job
    state = PartialState(cpu=not torch.cuda.is_available())
    return Processes(state.process_index, state.num_processes, state.local_process_index, state.wait_for_everyone)


def fingerprint(settings: dict) -> str:
    """A short digest of a job's settings (JSON-serialisable), stamped on each of its chunk records."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_status(processes: Processes, folder: Path) -> None:
    """Start a job's shared state: the main process clears the status files of an earlier launch from
    `folder`/STATUS_DIR, then every process waits for it. Call it once the main process has checked the job's
    settings (every process after it may rely on what the main process wrote before)."""
    if processes.is_main:
        shutil.rmtree(Path(folder) / STATUS_DIR, ignore_errors=True)
    processes.wait()


def read_shared(path: Path) -> dict:
    """The JSON file `path` as the main process wrote it before the others started (a job's settings or progress);
    a missing one is a FileNotFoundError saying why: this process does not see the main process's folder."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} is missing: the main process writes it before the others start, so this process does not see "
            "the main process's output folder (on several nodes the output must be on a filesystem every node shares)"
        ) from None


class ProcessFailed(RuntimeError):
    """Another process of the job failed; its message is in this error's."""


class JobProgress:
    """One progress bar for the work of every process, on the main process.

    Each process adds its own count (`update`); with several processes, each writes its count to
    `folder/STATUS_DIR/PHASE-INDEX.json`, and the main process's bar shows the sum. `finish` reports this
    process done and waits until every process is: the main process's bar keeps counting meanwhile, and
    a process that reported a failure makes the others raise `ProcessFailed` with its message.
    """

    def __init__(self, processes: Processes, folder: Path, phase: str, total: int, initial: int = 0,
                 desc: str = "", unit: str = "it", enabled: bool = True) -> None:
        from tqdm.auto import tqdm

        self.processes = processes
        self.folder = Path(folder) / STATUS_DIR
        self.phase = phase
        self.own = 0
        self.initial = initial
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit,
                        disable=not enabled or not processes.is_main)
        self._written = 0.0

    def _path(self, index: int) -> Path:
        return self.folder / f"{self.phase}-{index:05d}.json"

    def _report(self, state: str, error: str | None = None) -> None:
        if self.processes.many:
            atomic_write_text(self._path(self.processes.index),
                              json.dumps({"done": self.own, "state": state, "error": error}))

    def _statuses(self) -> list[dict]:
        statuses = []
        for index in range(self.processes.count):
            try:
                statuses.append(json.loads(self._path(index).read_text()))
            except (OSError, ValueError):
                statuses.append({"done": 0, "state": "starting", "error": None})
        return statuses

    def _refresh(self, statuses: list[dict] | None = None) -> None:
        others = 0
        if self.processes.many:
            statuses = statuses if statuses is not None else self._statuses()
            others = sum(s["done"] for i, s in enumerate(statuses) if i != self.processes.index)
        self.bar.n = self.initial + self.own + others
        self.bar.refresh()

    def update(self, n: int) -> None:
        """Count `n` more units of this process's share as done."""
        self.own += n
        now = time.monotonic()
        if self.processes.many and now - self._written > 0.5:  # at most two status writes (main: reads) a second
            self._written = now
            self._report("running")
            if self.processes.is_main:
                self._refresh()
        elif not self.processes.many:
            self._refresh()

    def failed(self, error: BaseException) -> None:
        """Report this process's failure to the others."""
        self._report("failed", f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)

    def finish(self) -> None:
        """Report this process's share done and wait until every process has reported."""
        self._report("finished")
        statuses = None
        if self.processes.many:
            while True:
                statuses = self._statuses()
                for index, status in enumerate(statuses):
                    if status["state"] == "failed" and index != self.processes.index:
                        self.bar.close()
                        raise ProcessFailed(
                            f"process {index} of {self.processes.count} failed: {status['error']} (what the "
                            "processes finished is kept: once the cause is fixed, the same command resumes)"
                        )
                if self.processes.is_main:
                    self._refresh(statuses)
                if all(s["state"] == "finished" for s in statuses):
                    break
                time.sleep(POLL_SECONDS)
            # no process goes on before every one has seen all finish; then none reads this phase's files again
            self.processes.wait()
            if self.processes.is_main:
                for index in range(self.processes.count):
                    self._path(index).unlink(missing_ok=True)
                try:
                    self.folder.rmdir()  # unless another phase's files are there
                except OSError:
                    pass
        self._refresh(statuses)
        self.bar.close()


@contextmanager
def job_progress(processes: Processes, folder: Path, phase: str, total: int, initial: int = 0, desc: str = "",
                 unit: str = "it", enabled: bool = True) -> Iterator[JobProgress]:
    """A `JobProgress` for the body of a `with`: on a normal exit this process reports finished and waits for
    the others (raising `ProcessFailed` if one failed); on an exception it reports the failure, so the others
    stop waiting, and the exception goes on."""
    progress = JobProgress(processes, folder, phase, total, initial, desc, unit, enabled)
    try:
        yield progress
    except BaseException as error:
        progress.failed(error)
        progress.bar.close()
        raise
    progress.finish()


class ChunkRecords:
    """Which chunks of a job are done: `folder/chunk-NNNNNN.json` per chunk, written atomically once the chunk's
    outputs are, carrying the job's fingerprint and what the merge needs (row counts, errors, metadata...)."""

    def __init__(self, folder: Path, fingerprint: str, chunks: int, describe: Callable[[int], str] | None = None) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.chunks = chunks
        self.describe = describe or (lambda chunk: f"chunk {chunk}")

    def path(self, chunk: int) -> Path:
        """The record file of `chunk`."""
        return self.folder / f"chunk-{chunk:06d}.json"

    def write(self, chunk: int, record: dict) -> None:
        """Record `chunk` as done with `record` (JSON-serialisable)."""
        atomic_write_text(self.path(chunk), json.dumps({"fingerprint": self.fingerprint, "chunk": chunk, **record}))

    def _read(self, path: Path) -> dict:
        try:
            record = json.loads(path.read_text())
            chunk = int(record["chunk"])
            mark = record["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a chunk record of diffalign ({error}); delete it to recompute its chunk") from None
        if mark != self.fingerprint or path.name != self.path(chunk).name or not 0 <= chunk < self.chunks:
            why = (f"written by a job with other settings (fingerprint {mark}, this job's {self.fingerprint})"
                   if mark != self.fingerprint else f"chunk {chunk} is not one of this job's {self.chunks} chunks")
            raise ValueError(f"{path}: a foreign chunk record, {why}; this folder holds another job's work: use another "
                             f"output, or delete {self.folder} to start over")
        return record

    def done(self) -> set[int]:
        """The chunks with a record (each checked to be this job's)."""
        if not self.folder.is_dir():
            return set()
        return {self._read(path)["chunk"] for path in sorted(self.folder.glob("chunk-*.json"))}

    def read_all(self, processes: Processes | None = None) -> list[dict]:
        """Every chunk's record in chunk order; a ValueError names the first chunk without one (and the process
        that owed it) or a foreign record."""
        present = {}
        if self.folder.is_dir():
            for path in sorted(self.folder.glob("chunk-*.json")):
                record = self._read(path)
                present[record["chunk"]] = record
        for chunk in range(self.chunks):
            if chunk not in present:
                raise self.missing(chunk, processes)
        return [present[chunk] for chunk in range(self.chunks)]

    def missing(self, chunk: int, processes: Processes | None = None) -> ValueError:
        """The error for `chunk` having no record at the merge, naming it and the process that owed it."""
        owner = f", the share of process {processes.owner(chunk)} of {processes.count}" if processes and processes.many else ""
        return ValueError(
            f"{self.folder}: no record of {self.describe(chunk)} (chunk {chunk} of {self.chunks}{owner}): it was "
            "not computed (rerun the same command to compute it), or was written where this process cannot "
            "see it (on several nodes the output must be on a filesystem every node shares)"
        )

    def clear(self) -> None:
        """Remove the records (once merged)."""
        shutil.rmtree(self.folder, ignore_errors=True)

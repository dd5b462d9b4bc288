"""Who an output folder belongs to: one run at a time, and one run's outputs per folder.

Before a run writes anything, its main process takes an exclusive lock on `OUTPUT_DIR/.train.lock` (flock:
the kernel drops it when the process ends, however it ends, so a killed run never leaves it stuck) and
decides, from what the folder holds, whose run this is:

- an empty or new folder: a new run, with a new run id (`run.json`, and every checkpoint's state.json);
- `train.resume` set: the checkpoint's run continues, with the settings a resume may change (`resume_rules`);
- another run's checkpoints or weights and no `train.resume`: refused, unless `train.overwrite=true`,
  which deletes that run's outputs first and says so;
- only the settings of a run that stopped before its first checkpoint: a new run starts over in it, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from ..config.schema import RunConfig
from ..data.skip_report import SKIP_FILE
from ..files import atomic_write_text
from ..models.lora import LORA_WEIGHTS
from .checkpoint import CHECKPOINTS, CONFIG_FILE, checkpoint_owner, list_checkpoints, resolve_resume, verify_checkpoint
from .methods.smpo import BOUNDS_FILE
from .resume_rules import check_resume_config
from .saved_weights import BEST_DIR
from .sources.round_log import ROUNDS_DIR, ROUNDS_LOG
from .sources.round_scores import ROUND_SCORES_LOG
from .validation import VALIDATION_DIR

try:
    import fcntl
except ImportError:  # not on Windows: runs there go without the lock
    fcntl = None  # type: ignore[assignment]

RUN_FILE = "run.json"
LOCK_FILE = ".train.lock"
METRICS_FILE = "metrics.jsonl"
LOGS_DIR = "logs"
UNET_DIR = "unet"
# what marks a folder as a run's: its checkpoints, its final weights, its settings
MARKS = (CHECKPOINTS, LORA_WEIGHTS, UNET_DIR, CONFIG_FILE, RUN_FILE)
# everything a run writes into its folder (what train.overwrite=true deletes)
OUTPUTS = (*MARKS, METRICS_FILE, LOGS_DIR, VALIDATION_DIR, SKIP_FILE, ROUNDS_DIR, ROUNDS_LOG,
           Path(ROUNDS_LOG).with_suffix(".png").name, ROUND_SCORES_LOG, BOUNDS_FILE, BEST_DIR)


class RunFolderError(ValueError):
    """An output folder this run may not train into (another run's, or in use)."""


@dataclass
class RunFolder:
    """A claimed output folder: the run's id, the checkpoint it continues (None: step 0) and what to tell the user."""

    path: Path
    run_id: str
    resume_from: Path | None
    notes: list[str] = field(default_factory=list)


@contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """Hold the exclusive lock of a run folder, or refuse (RunFolderError naming the holder) at once."""
    if fcntl is None:
        yield
        return
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "pid unknown"
            raise RunFolderError(
                f"train.output_dir={out}: another process ({holder}) is training into this folder; wait for it to "
                f"end, or choose another train.output_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def _marks(out: Path) -> list[str]:
    """What in `out` shows another run was there, described."""
    found = []
    checkpoints = [p.name for p in list_checkpoints(out)]
    if checkpoints:
        found.append(f"checkpoints {', '.join(checkpoints)}")
    found += [name for name in MARKS if name != CHECKPOINTS and (out / name).exists()]
    return found


def _saved_work(out: Path) -> bool:
    """Whether `out` holds a run's checkpoints or final weights (not only the settings of a run that stopped
    before its first checkpoint)."""
    return bool(list_checkpoints(out)) or any((out / name).exists() for name in (LORA_WEIGHTS, UNET_DIR))


def _clear(out: Path) -> list[str]:
    """Delete a previous run's outputs from `out`; return the names deleted."""
    deleted = []
    for name in OUTPUTS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        deleted.append(name)
    return deleted


def _recorded_run(out: Path) -> str | None:
    try:
        run_id = json.loads((out / RUN_FILE).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return run_id if isinstance(run_id, str) else None


def _refuse_foreign(out: Path, found: list[str]) -> RunFolderError:
    return RunFolderError(
        f"train.output_dir={out} already holds another run ({'; '.join(found)}): continue it with "
        f"train.resume=latest, start this run in another train.output_dir, or set train.overwrite=true to delete that "
        f"run's outputs first"
    )


def _continued(cfg: RunConfig, out: Path, checkpoint: Path, found: list[str], recorded: str | None
               ) -> tuple[str, list[str]]:
    """The run id and notes of a run that resumes `checkpoint` into `out` (refusing another run's folder)."""
    inside = checkpoint.resolve().parent == (out / CHECKPOINTS).resolve()
    if inside and cfg.train.overwrite:
        raise RunFolderError(f"train.overwrite=true would delete {checkpoint}, the checkpoint train.resume names")
    run_id = checkpoint_owner(checkpoint) or recorded or uuid.uuid4().hex
    if found and not inside and recorded != run_id and not cfg.train.overwrite:
        raise _refuse_foreign(out, found)
    notes = []
    changes = check_resume_config(checkpoint, cfg)
    if changes:
        notes.append(f"resuming with changed settings, applied from the first resumed step: {'; '.join(changes)}")
    later = [p.name for p in list_checkpoints(out) if inside and p.name > checkpoint.name]
    if later:
        notes.append(f"the checkpoints after {checkpoint.name} ({', '.join(later)}) belong to the continuation this "
                     f"resume replaces; this run's next checkpoint deletes them")
    return run_id, notes


def _restarted(out: Path, found: list[str], recorded: str | None) -> tuple[str, list[str]]:
    """The run id and notes of train.resume=latest in a folder without checkpoints: step 0 of the folder's run,
    unless that run finished (its weights would be lost)."""
    weights = [name for name in (LORA_WEIGHTS, UNET_DIR) if (out / name).exists()]
    if weights:
        raise RunFolderError(
            f"train.resume=latest: {out} holds no checkpoint to continue from, but a finished run's weights "
            f"({', '.join(weights)}): start over in it with train.overwrite=true (without train.resume), or use "
            f"another train.output_dir"
        )
    notes = [f"train.resume=latest: no checkpoint in {out} yet; starting at step 0"] if found else []
    return recorded or uuid.uuid4().hex, notes


def _claim(cfg: RunConfig, stack: ExitStack) -> RunFolder:
    t = cfg.train
    out = Path(t.output_dir)
    if t.overwrite and t.resume == "latest":
        raise RunFolderError(
            "train.overwrite=true deletes the checkpoints train.resume=latest would continue from: set only one of them"
        )
    out.mkdir(parents=True, exist_ok=True)
    stack.enter_context(folder_lock(out))
    resume_from = resolve_resume(t.resume, out)
    found, recorded = _marks(out), _recorded_run(out)
    if resume_from is not None:
        verify_checkpoint(resume_from)
        run_id, notes = _continued(cfg, out, resume_from, found, recorded)
    elif t.resume == "latest":
        run_id, notes = _restarted(out, found, recorded)
    elif found and not t.overwrite and _saved_work(out):
        raise _refuse_foreign(out, found)
    elif found and not t.overwrite:  # a run that stopped before its first checkpoint (bad data, a crash)
        run_id = uuid.uuid4().hex
        notes = [f"{out} holds a run that saved no checkpoint or weights ({', '.join(found)}): starting over in it "
                 f"(replaced its {', '.join(_clear(out))})"]
    else:
        run_id, notes = uuid.uuid4().hex, []
    if t.overwrite and found:
        notes.append(f"train.overwrite=true: deleted the previous run's {', '.join(_clear(out))} in {out}")
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_text(out / RUN_FILE, json.dumps({"run_id": run_id, "started": started}) + "\n")
    return RunFolder(out, run_id, resume_from, notes)


def claim_run_folder(cfg: RunConfig, accelerator: Accelerator, stack: ExitStack) -> RunFolder:
    """Lock `train.output_dir` for this run (until `stack` closes) and decide whose run it holds, on the main
    process; every process gets the same answer, or raises the same error."""
    outcome: RunFolder | Exception | None = None
    if accelerator.is_main_process:
        try:
            outcome = _claim(cfg, stack)
        except Exception as error:  # every process must raise it, not only the main one
            outcome = error
    if accelerator.num_processes > 1:
        outcome = broadcast_object_list([outcome])[0]
    if isinstance(outcome, Exception):
        raise outcome
    return outcome  # type: ignore[return-value]

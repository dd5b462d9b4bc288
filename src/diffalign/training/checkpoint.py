"""Resumable checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a folder `OUTPUT_DIR/checkpoints/step-NNNNNNNN/` holding the trainable weights by
parameter name, the optimizer state, the learning-rate scheduler, the gradient scaler, every process's
RNG states and the trainer's position (`state.json`), plus, for LoRA, `pytorch_lora_weights.safetensors`
so that `diffalign eval` and `pipe.load_lora_weights` take a checkpoint as they take a finished run.
It is written into a hidden temporary folder and renamed into place, so a crash leaves either the whole
checkpoint or none. `state.json` names the run that wrote it (`run_id`); rotation deletes only that run's
own older checkpoints and keeps its newest `keep`. A checkpoint that cannot be read back (a truncated or
edited file) is refused by name before anything is loaded (`verify_checkpoint`).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..files import give_usual_permissions

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
TRAINABLE_FILE = "trainable.safetensors"
CONFIG_FILE = "config.yaml"
# what every checkpoint of the training loop holds besides the per-process and per-source files
REQUIRED_FILES = (STATE_FILE, CONFIG_FILE, TRAINABLE_FILE, "optimizer.json", "optimizer.safetensors", "schedule.json",
                  "schedule.safetensors")
_NAME = re.compile(r"^step-(\d{8})$")


class CheckpointUnreadable(ValueError):
    """A checkpoint folder whose files cannot be read back (truncated, edited or missing)."""


def flatten_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """A JSON-able skeleton of a nested state (dicts with int or str keys, lists, tuples, numbers,
    tensors); tensors are moved into `tensors` under generated names and referenced by name."""
    if isinstance(obj, torch.Tensor):
        name = f"{prefix}.{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous()
        return {"__tensor__": name}
    if isinstance(obj, dict):
        return {"__items__": [[k, flatten_state(v, tensors, prefix)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten_state(v, tensors, prefix) for v in obj]}
    if isinstance(obj, list):
        return [flatten_state(v, tensors, prefix) for v in obj]
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a value of type {type(obj).__name__}")


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `flatten_state`."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__items__" in skeleton:
            return {k: unflatten_state(v, tensors) for k, v in skeleton["__items__"]}
        if "__tuple__" in skeleton:
            return tuple(unflatten_state(v, tensors) for v in skeleton["__tuple__"])
        if "__ndarray__" in skeleton:
            return np.array(skeleton["__ndarray__"], dtype=skeleton["dtype"])
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def save_state_files(folder: Path, name: str, state: Any) -> None:
    """Write `state` as `name.safetensors` (its tensors) and `name.json` (the rest)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten_state(state, tensors)
    save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(skeleton))


def load_state_files(folder: Path, name: str, device: torch.device | str = "cpu") -> Any:
    """Read what `save_state_files` wrote."""
    tensors = load_file(str(folder / f"{name}.safetensors"), device=str(device))
    return unflatten_state(json.loads((folder / f"{name}.json").read_text()), tensors)


def rng_state() -> dict:
    """This process's python, numpy, torch and CUDA generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    """Where the checkpoint of `step` lives."""
    return Path(out_dir) / CHECKPOINTS / f"step-{step:08d}"


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary folders of an interrupted save are ignored)."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def resolve_resume(resume: str | None, out_dir: Path) -> Path | None:
    """The checkpoint `train.resume` names: None, 'latest' (None when the run has none yet) or a folder."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(out_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"train.resume={resume!r}: not a checkpoint folder (no {STATE_FILE}); "
            f"checkpoints of {out_dir}: {[p.name for p in list_checkpoints(out_dir)] or 'none'}"
        )
    return path


def checkpoint_owner(folder: Path) -> str | None:
    """The run id a checkpoint's state.json names (None for one written before run ids, or unreadable)."""
    try:
        owner = json.loads((Path(folder) / STATE_FILE).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return owner if isinstance(owner, str) else None


def _problem(folder: Path, required: tuple[str, ...]) -> str | None:
    """What makes a checkpoint folder unreadable, or None when every file parses."""
    for name in required:
        if not (folder / name).is_file():
            return f"{name} is missing"
    for path in sorted(folder.glob("*.json")):
        try:
            json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as error:
            return f"{path.name} is not valid JSON ({error})"
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as error:  # safetensors raises its own SafetensorError for every kind of damage
            return f"{path.name} is truncated or not a safetensors file ({error})"
    for path in sorted(folder.glob("*.json")):  # save_state_files writes NAME.json beside NAME.safetensors
        if path.name != STATE_FILE and not path.with_suffix(".safetensors").is_file():
            return f"{path.with_suffix('.safetensors').name} is missing"
    if CONFIG_FILE in required:
        try:
            settings = yaml.safe_load((folder / CONFIG_FILE).read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            return f"{CONFIG_FILE} is not valid YAML ({str(error).splitlines()[0]})"
        if not isinstance(settings, dict):
            return f"{CONFIG_FILE} does not hold a run's settings"
    state = json.loads((folder / STATE_FILE).read_text())
    if not isinstance(state, dict) or not all(isinstance(state.get(k), int) for k in ("step", "micro_step")):
        return f"{STATE_FILE} does not hold the step and micro_step of the run"
    return None


def verify_checkpoint(folder: Path, required: tuple[str, ...] = REQUIRED_FILES) -> None:
    """Refuse (CheckpointUnreadable, one line naming the file and the way on) a checkpoint folder whose files
    cannot all be read back: a missing file, JSON that does not parse, a truncated safetensors file."""
    folder = Path(folder)
    problem = _problem(folder, required)
    if problem is None:
        return
    older = [p for p in list_checkpoints(folder.parent.parent) if p.name < folder.name]  # its siblings
    way = (f"resume from the one before it (train.resume={older[-1]}), or delete {folder.name} (train.resume=latest "
           f"then takes {older[-1].name})" if older else
           "no older checkpoint to fall back on: start the run again (train.overwrite=true deletes this one, or use "
           "another train.output_dir)")
    raise CheckpointUnreadable(f"checkpoint {folder} cannot be read: {problem}; {way}")


def save_checkpoint(
    out_dir: Path,
    step: int,
    write_shared: Callable[[Path], None],
    write_own: Callable[[Path], None],
    is_main: bool,
    barrier: Callable[[], None],
    keep: int,
    run_id: str | None = None,
) -> Path:
    """Write the checkpoint of `step` atomically; every process calls this.

    The main process creates a temporary folder; each process adds its own files (`write_own`: RNG
    states); the main process adds the shared ones (`write_shared`: weights, optimizer, state.json),
    renames the folder into place and rotates the run's own checkpoints (`rotate`).
    """
    final = checkpoint_dir(out_dir, step)
    tmp = final.with_name(f".tmp-{final.name}")
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    write_own(tmp)
    barrier()
    if is_main:
        write_shared(tmp)  # state.json last: its presence marks a complete checkpoint
        give_usual_permissions(tmp)  # safetensors writes 0600 files
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in rotate(out_dir, step, keep, run_id):
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def rotate(out_dir: Path, step: int, keep: int, run_id: str | None) -> list[Path]:
    """The checkpoints to delete once the one of `step` is written: the run's own (state.json names `run_id`,
    or no run at all, as before run ids) older than its newest `keep`, and its own after `step` (left by the
    continuation a resume from an older checkpoint replaces). Another run's checkpoints are never deleted."""
    own = [p for p in list_checkpoints(out_dir) if checkpoint_owner(p) in (run_id, None)]
    later = [p for p in own if int(p.name[5:]) > step]
    earlier = [p for p in own if int(p.name[5:]) < step]
    return earlier[: max(len(earlier) - (keep - 1), 0)] + later

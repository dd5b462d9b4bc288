"""Resumable checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a folder `OUTPUT_DIR/checkpoints/step-NNNNNNNN/` holding the trainable weights by
parameter name, the optimizer state, the learning-rate scheduler, the gradient scaler, every process's
RNG states and the trainer's position (`state.json`), plus, for LoRA, `pytorch_lora_weights.safetensors`
so that `diffalign eval` and `pipe.load_lora_weights` take a checkpoint as they take a finished run.
It is written into a hidden temporary folder and renamed into place, so a crash leaves either the whole
checkpoint or none; only the newest `keep` are kept.
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
from safetensors.torch import load_file, save_file

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
_NAME = re.compile(r"^step-(\d{8})$")


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


def save_checkpoint(
    out_dir: Path,
    step: int,
    write_shared: Callable[[Path], None],
    write_own: Callable[[Path], None],
    is_main: bool,
    barrier: Callable[[], None],
    keep: int,
) -> Path:
    """Write the checkpoint of `step` atomically; every process calls this.

    The main process creates a temporary folder; each process adds its own files (`write_own`: RNG
    states); the main process adds the shared ones (`write_shared`: weights, optimizer, state.json),
    renames the folder into place and deletes all but the newest `keep` checkpoints.
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
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final

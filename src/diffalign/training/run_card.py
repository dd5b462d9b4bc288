"""The model card of a run's saved weights (`models.model_card`), with what only the training side knows: the
device it ran on and how long this session of the run has taken."""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path

import torch

from ..config.schema import RunConfig
from ..models.model_card import TrainingFacts, write_training_card
from .run_folder import RUN_FILE


def device_description(device: torch.device) -> str:
    """The device a process trains on, named: the GPU's model for CUDA, else the processor."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (cuda)"
    return f"{platform.processor() or platform.machine() or 'unknown processor'} ({device.type})"


def session_seconds(out_dir: Path) -> float | None:
    """Seconds since this session of the run claimed its folder (`run.json`'s `started`), or None unreadable."""
    try:
        started = datetime.datetime.strptime(json.loads((out_dir / RUN_FILE).read_text())["started"],
                                             "%Y-%m-%dT%H:%M:%S%z")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()


def write_run_card(folder: Path, cfg: RunConfig, family: str, steps: int, processes: int, device: torch.device,
                   data: str, unit: str = "pairs", resumed_from: Path | None = None, note: str | None = None,
                   shown: Path | None = None) -> Path:
    """Write the model card `folder/README.md` of the weights a run saved into `folder` (the run folder, or its
    `best/`; `shown`: where they will be, when `folder` is a temporary one) after `steps` optimizer steps;
    returns its path."""
    facts = TrainingFacts(cfg, family, steps, processes, device_description(device),
                          session_seconds(Path(cfg.train.output_dir)), data, unit,
                          resumed_from.name if resumed_from is not None else None, note)
    return write_training_card(folder, facts, shown)

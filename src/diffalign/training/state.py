"""What a checkpoint holds for the training loop, and putting it back: weights, optimizer, schedule,
gradient scaler, RNG states and the position in the data (the global micro-step)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from ..models.lora import save_lora
from .checkpoint import STATE_FILE, load_state_files, rng_state, save_checkpoint, save_state_files, set_rng_state

TRAINABLE_FILE = "trainable.safetensors"


@dataclass
class TrainingState:
    """The live objects a checkpoint captures."""

    accelerator: Accelerator
    unet: torch.nn.Module  # as prepared by accelerate
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    lora: bool
    family: str
    global_batch: int  # pairs per micro-step over all processes
    config_text: str

    def _trainable(self) -> dict[str, torch.nn.Parameter]:
        unet = self.accelerator.unwrap_model(self.unet)
        return {name: p for name, p in unet.named_parameters() if p.requires_grad}

    def save(self, out_dir: Path, step: int, micro_step: int, keep: int) -> Path:
        """Write the checkpoint of `step` (every process must call this)."""
        acc = self.accelerator

        def write_own(folder: Path) -> None:
            save_state_files(folder, f"rng-{acc.process_index}", rng_state())

        def write_shared(folder: Path) -> None:
            save_file({k: p.detach().cpu().contiguous() for k, p in self._trainable().items()}, str(folder / TRAINABLE_FILE))
            if self.lora:
                save_lora(acc.unwrap_model(self.unet), folder, self.family)
            save_state_files(folder, "optimizer", self.optimizer.state_dict())
            scaler = acc.scaler.state_dict() if acc.scaler is not None else None
            save_state_files(folder, "schedule", {"lr_scheduler": self.lr_scheduler.state_dict(), "scaler": scaler})
            (folder / "config.yaml").write_text(self.config_text)
            position = {"step": step, "micro_step": micro_step, "global_batch": self.global_batch,
                        "processes": acc.num_processes}
            (folder / STATE_FILE).write_text(json.dumps(position, indent=2))

        return save_checkpoint(out_dir, step, write_shared, write_own, acc.is_main_process, acc.wait_for_everyone, keep)

    def restore(self, folder: Path) -> tuple[int, int]:
        """Load a checkpoint into the live objects; return its (step, micro_step)."""
        acc = self.accelerator
        position = json.loads((folder / STATE_FILE).read_text())
        if position["global_batch"] != self.global_batch:
            raise ValueError(
                f"{folder} was written with {position['global_batch']} pairs per micro-step over all processes, this "
                f"run has {self.global_batch}: resuming would change the data order. Keep train.batch_size x "
                f"processes equal to the checkpoint's, or start a new run (another train.output_dir)."
            )
        saved = load_file(str(folder / TRAINABLE_FILE))
        trainable = self._trainable()
        if set(saved) != set(trainable):
            missing, extra = sorted(set(trainable) - set(saved))[:3], sorted(set(saved) - set(trainable))[:3]
            raise ValueError(
                f"{folder / TRAINABLE_FILE} does not match this model's trainable parameters "
                f"(missing e.g. {missing}, unexpected e.g. {extra}): was it written with other lora.* settings?"
            )
        with torch.no_grad():
            for name, p in trainable.items():
                p.copy_(saved[name])
        self.optimizer.load_state_dict(load_state_files(folder, "optimizer"))
        schedule = load_state_files(folder, "schedule")
        self.lr_scheduler.load_state_dict(schedule["lr_scheduler"])
        if acc.scaler is not None and schedule["scaler"] is not None:
            acc.scaler.load_state_dict(schedule["scaler"])
        own = folder / f"rng-{acc.process_index}.json"
        if own.is_file():
            set_rng_state(load_state_files(folder, f"rng-{acc.process_index}"))
        return position["step"], position["micro_step"]

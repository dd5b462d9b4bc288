"""What a checkpoint holds for the training loop, and putting it back: weights, optimizer, schedule,
gradient scaler, RNG states and the position in the data (the global micro-step).

Weights and optimizer state go through `torch.distributed.checkpoint.state_dict`, which names every
tensor by its parameter name and, under FSDP2, gathers the shards into whole tensors. A checkpoint
is therefore the same set of files whether it was written by one process, by DDP or by FSDP (the
tests resume it under one process and under FSDP2; the global batch must stay the same).

Resuming takes the learning-rate schedule from this run's settings, not the checkpoint's: the schedule's
position (its step count) comes from the checkpoint, its shape (peak rate, warm-up, length) from the
current config, so a changed `train.learning_rate` or `train.max_steps` applies from the first resumed step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import extract_model_from_parallel
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from ..models.lora import save_lora
from .checkpoint import (
    CONFIG_FILE,
    STATE_FILE,
    TRAINABLE_FILE,
    load_state_files,
    rng_state,
    save_checkpoint,
    save_state_files,
    set_rng_state,
)

__all__ = ["FORMAT", "TRAINABLE_FILE", "TrainingState", "full_trainable_state", "trainable_names"]
FORMAT = 2  # 1: optimizer state keyed by parameter index (before FSDP support)


def _inner(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the real one


def _take_schedule(scheduler: object, optimizer: torch.optim.Optimizer, peak: list[float]) -> None:
    """Put this run's schedule at the restored scheduler's position: its peak rates replace the checkpoint's, and
    every parameter group's current rate becomes what this run's schedule gives at that step (the checkpoint's
    optimizer state holds the rate of the checkpoint's schedule)."""
    scheduler.base_lrs = peak
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if lambdas is None:  # not a LambdaLR (every diffusers schedule is one): keep the restored rates
        return
    rates = [base * fn(scheduler.last_epoch) for base, fn in zip(peak, lambdas)]
    for group, base, rate in zip(optimizer.param_groups, peak, rates):
        group["initial_lr"], group["lr"] = base, rate


def trainable_names(model: torch.nn.Module) -> list[str]:
    """Names of the parameters that train, as `full_trainable_state` keys them (without DDP's `module.`)."""
    return [name for name, p in extract_model_from_parallel(model).named_parameters() if p.requires_grad]


def full_trainable_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The trainable weights and (with `optimizer`) its state, whole and on the CPU, keyed by parameter name.

    One call for a plain module, DDP and FSDP2 (where it gathers the shards). Every process must
    enter it; under several processes only the main one receives the tensors, the others get empty
    dicts.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    if optimizer is None:
        weights, optim = get_model_state_dict(model, options=options), None
    else:
        weights, optim = get_state_dict(model, _inner(optimizer), options=options)
    names = set(trainable_names(model))
    return {k: v for k, v in weights.items() if k in names}, optim


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
    extras: list = field(default_factory=list)  # objects with save(folder, rank) / restore(folder, rank): the
    # batch source's position beyond the micro-step, the reference pool
    run_id: str | None = None  # written into every checkpoint; rotation deletes only this run's own

    def save(self, out_dir: Path, step: int, micro_step: int, keep: int) -> Path:
        """Write the checkpoint of `step` (every process must call this)."""
        acc = self.accelerator
        weights, optim = full_trainable_state(self.unet, self.optimizer)

        def write_own(folder: Path) -> None:
            save_state_files(folder, f"rng-{acc.process_index}", rng_state())
            for extra in self.extras:
                extra.save(folder, acc.process_index)

        def write_shared(folder: Path) -> None:
            save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / TRAINABLE_FILE))
            if self.lora:
                save_lora(acc.unwrap_model(self.unet), folder, self.family, weights)
            save_state_files(folder, "optimizer", optim)
            scaler = acc.scaler.state_dict() if acc.scaler is not None else None
            save_state_files(folder, "schedule", {"lr_scheduler": self.lr_scheduler.state_dict(), "scaler": scaler})
            (folder / CONFIG_FILE).write_text(self.config_text)
            position = {"step": step, "micro_step": micro_step, "global_batch": self.global_batch,
                        "processes": acc.num_processes, "format": FORMAT, "run_id": self.run_id}
            (folder / STATE_FILE).write_text(json.dumps(position, indent=2))

        return save_checkpoint(out_dir, step, write_shared, write_own, acc.is_main_process, acc.wait_for_everyone, keep,
                               self.run_id)

    def restore(self, folder: Path) -> tuple[int, int]:
        """Load a checkpoint into the live objects; return its (step, micro_step)."""
        acc = self.accelerator
        position = json.loads((folder / STATE_FILE).read_text())
        if position.get("format", 1) != FORMAT:
            raise ValueError(
                f"{folder} was written by an older diffalign (checkpoint format {position.get('format', 1)}, this "
                f"version reads {FORMAT}); its LoRA file still loads with pipe.load_lora_weights, but the run cannot resume"
            )
        if position["global_batch"] != self.global_batch:
            raise ValueError(
                f"{folder} was written with {position['global_batch']} pairs per micro-step over all processes, this "
                f"run has {self.global_batch}: resuming would change the data order. Keep train.batch_size x "
                f"processes equal to the checkpoint's, or start a new run (another train.output_dir)."
            )
        saved = load_file(str(folder / TRAINABLE_FILE))
        trainable = set(trainable_names(self.unet))
        if set(saved) != trainable:
            missing, extra = sorted(trainable - set(saved))[:3], sorted(set(saved) - trainable)[:3]
            raise ValueError(
                f"{folder / TRAINABLE_FILE} does not match this model's trainable parameters "
                f"(missing e.g. {missing}, unexpected e.g. {extra}): was it written with other lora.* settings?"
            )
        set_state_dict(
            self.unet, _inner(self.optimizer), model_state_dict=saved,
            optim_state_dict=load_state_files(folder, "optimizer"),
            options=StateDictOptions(full_state_dict=True, ignore_frozen_params=True, strict=False),
        )
        schedule = load_state_files(folder, "schedule")
        scheduler = getattr(self.lr_scheduler, "scheduler", self.lr_scheduler)  # inside accelerate's wrapper
        peak = list(scheduler.base_lrs)  # this run's learning rates, which the checkpoint's would replace
        self.lr_scheduler.load_state_dict(schedule["lr_scheduler"])
        _take_schedule(scheduler, _inner(self.optimizer), peak)
        if acc.scaler is not None and schedule["scaler"] is not None:
            acc.scaler.load_state_dict(schedule["scaler"])
        for extra in self.extras:
            extra.restore(folder, acc.process_index)
        own = folder / f"rng-{acc.process_index}.json"
        if own.is_file():
            set_rng_state(load_state_files(folder, f"rng-{acc.process_index}"))
        return position["step"], position["micro_step"]

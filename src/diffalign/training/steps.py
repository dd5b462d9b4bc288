"""The step runner: one micro-step of any method under accelerate (accumulation, mixed precision, the
non-finite check, backward, clipping, the optimizer and schedule steps)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from .methods.base import Method, TrainableModel
from .randomness import BatchRandom


class TrainingDiverged(FloatingPointError):
    """A non-finite loss stopped the run."""


@dataclass
class StepRunner:
    """Runs micro-steps; `last_checkpoint` is named in the error when a loss goes non-finite."""

    accelerator: Accelerator
    method: Method
    model: TrainableModel
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    max_grad_norm: float | None
    last_checkpoint: Path | None = None
    grad_norm: float = 0.0

    def run(self, batch: Any, rand: BatchRandom, step: int) -> dict[str, torch.Tensor]:
        """One micro-step on `batch` (the method's input); returns its loss and metrics, detached.
        `grad_norm` holds the norm before clipping after a micro-step that stepped the optimizer."""
        acc = self.accelerator
        with acc.accumulate(self.model.unet):
            with acc.autocast():
                out = self.method(self.model, batch, rand)
            finite = torch.isfinite(out.loss.detach()).float()
            if acc.num_processes > 1:
                finite = acc.reduce(finite, "min")
            if finite.item() < 1:
                raise TrainingDiverged(
                    f"non-finite loss at step {step + 1}: stopped. The last good checkpoint is "
                    f"{self.last_checkpoint or 'none (train.checkpoint_every=0 or not reached yet)'}; lower "
                    f"train.learning_rate or the objective's beta, or use train.mixed_precision=bf16 instead of fp16, "
                    f"then continue with train.resume=latest"
                )
            acc.backward(out.loss)
            if acc.sync_gradients:
                limit = self.max_grad_norm if self.max_grad_norm is not None else float("inf")
                norm = acc.clip_grad_norm_(self.params, limit)
                self.grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return {"loss": out.loss.detach(), **out.metrics}

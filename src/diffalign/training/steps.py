"""The step runner: one micro-step of any method under accelerate (accumulation, mixed precision, the
non-finite check, backward, clipping, the optimizer and schedule steps), and the check that the weights
are finite before any of them is saved."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from .methods.base import Method, TrainableModel
from .randomness import BatchRandom
from .state import TrainingState

ADVICE = (
    "lower train.learning_rate or the objective's beta, or use train.mixed_precision=bf16 instead of fp16 (each "
    "applies on resume), then continue with train.resume=latest"
)


class TrainingDiverged(FloatingPointError):
    """A non-finite loss or non-finite weights stopped the run."""


def any_process(accelerator: Accelerator, flag: bool | torch.Tensor) -> bool:
    """Whether `flag` holds on at least one process (every process must call this, and gets the same answer)."""
    if accelerator.num_processes == 1 and isinstance(flag, bool):
        return flag
    value = flag.detach().float().reshape(1) if isinstance(flag, torch.Tensor) else torch.tensor([float(flag)])
    value = value.to(accelerator.device)
    if accelerator.num_processes > 1:
        value = accelerator.reduce(value, "max")  # accelerate's reduce knows sum, mean and max (not min)
    return value.item() > 0


@dataclass
class StepRunner:
    """Runs micro-steps; `last_checkpoint` is named in the error when the loss or the weights go non-finite."""

    accelerator: Accelerator
    method: Method
    model: TrainableModel
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    max_grad_norm: float | None
    last_checkpoint: Path | None = None
    grad_norm: float = 0.0

    def _last_good(self) -> str:
        return str(self.last_checkpoint or "none (train.checkpoint_every=0 or not reached yet)")

    def run(self, batch: Any, rand: BatchRandom, step: int) -> dict[str, torch.Tensor]:
        """One micro-step on `batch` (the method's input); returns its loss and metrics, detached.
        `grad_norm` holds the norm before clipping after a micro-step that stepped the optimizer."""
        acc = self.accelerator
        with acc.accumulate(self.model.unet):
            with acc.autocast():
                out = self.method(self.model, batch, rand)
            if any_process(acc, ~torch.isfinite(out.loss.detach())):
                raise TrainingDiverged(
                    f"non-finite loss at step {step + 1}: stopped. The last good checkpoint is {self._last_good()}; "
                    f"{ADVICE}"
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

    def check_weights(self, step: int, saving: str) -> None:
        """Stop with TrainingDiverged, before `saving` is written, when a trainable weight on any process is not
        finite (an optimizer step can overflow them while the loss that led to it was finite)."""
        local = [p.to_local() if hasattr(p, "to_local") else p for p in self.params]  # FSDP2: this process's shard
        bad = torch.stack([~torch.isfinite(p.detach()).all() for p in local]).any()
        if any_process(self.accelerator, bad):
            raise TrainingDiverged(
                f"non-finite weights after step {step}: stopped before saving {saving}. The last good checkpoint is "
                f"{self._last_good()}; {ADVICE}"
            )

    def checkpoint(self, state: TrainingState, out_dir: Path, step: int, micro_step: int, keep: int) -> Path:
        """Write the checkpoint of `step` once the weights are known to be finite (every process calls this)."""
        self.check_weights(step, "its checkpoint")
        self.last_checkpoint = state.save(out_dir, step, micro_step, keep)
        return self.last_checkpoint

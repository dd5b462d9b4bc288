"""What every objective returns: the loss to back-propagate and its health metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ObjectiveOutput:
    """A scalar `loss` (with grad) and detached scalar `metrics` (implicit accuracy, margins, errors...)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


def denoising_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample squared error averaged over all non-batch dims (C, H, W): shape (N,), float32.

    Averaging (not summing) makes the error, and hence the DPO beta, independent of the resolution.
    """
    return (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)

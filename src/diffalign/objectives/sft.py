"""Supervised fine-tuning on the preferred images: the Diffusion-DPO paper's SFT baseline."""

from __future__ import annotations

import torch

from .types import ObjectiveOutput, denoising_error


def sft_loss(prediction: torch.Tensor, target: torch.Tensor) -> ObjectiveOutput:
    """The standard diffusion loss on the winners only: mean over batch and elements of (pred - target)^2.

    Equals `F.mse_loss(prediction, target)`, the official `--sft` mode. Metric: `model_err_w`.
    """
    err = denoising_error(prediction, target)
    loss = err.mean()
    return ObjectiveOutput(loss=loss, metrics={"model_err_w": loss.detach()})

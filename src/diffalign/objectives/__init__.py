"""Objectives as pure functions of tensors: no models, no I/O, easy to check against the papers."""

from .dpo import diffusion_dpo_loss, dpo_logits
from .sft import sft_loss
from .types import ObjectiveOutput, denoising_error

__all__ = ["ObjectiveOutput", "denoising_error", "diffusion_dpo_loss", "dpo_logits", "sft_loss"]

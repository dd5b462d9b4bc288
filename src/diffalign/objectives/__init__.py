"""Objectives as pure functions of tensors: no models, no I/O, easy to check against the papers."""

from .dpo import dpo_logits, dpo_loss
from .seppo import anchor_sign, seppo_loss
from .sft import sft_loss
from .types import ObjectiveOutput, denoising_error

__all__ = ["ObjectiveOutput", "anchor_sign", "denoising_error", "dpo_logits", "dpo_loss", "seppo_loss", "sft_loss"]

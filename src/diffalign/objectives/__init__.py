"""Objectives as pure functions of tensors: no models, no I/O, easy to check against the papers."""

from .dcpo import dcpo_loss
from .ddpo import ddpo_loss, gaussian_step_kl
from .dgpo import dgpo_loss
from .dpo import PAIR_LOSSES, dpo_logits, dpo_loss
from .grpo import grpo_loss
from .kto import kto_loss
from .mapo import error_odds, mapo_loss
from .seppo import anchor_sign, seppo_loss
from .sft import sft_loss
from .types import ObjectiveOutput, denoising_error

__all__ = [
    "PAIR_LOSSES", "ObjectiveOutput", "anchor_sign", "dcpo_loss", "ddpo_loss", "denoising_error", "dgpo_loss", "dpo_logits",
    "dpo_loss", "error_odds", "gaussian_step_kl", "grpo_loss", "kto_loss", "mapo_loss", "seppo_loss", "sft_loss",
]

"""The reference model of preference objectives: the adapter-disabled UNet (LoRA) or a frozen copy."""

from __future__ import annotations

import copy

import torch
from diffusers import UNet2DConditionModel


class AdapterDisabledReference:
    """The base model as the trained UNet with its LoRA adapters switched off: no second UNet in memory.

    Exact: with peft the adapter-disabled forward equals the base UNet's forward.
    """

    def __init__(self, unet: UNet2DConditionModel) -> None:
        self.unet = unet  # the unwrapped module (not a DDP wrapper: no gradient sync on this pass)

    @torch.no_grad()
    def predict(self, sample: torch.Tensor, timestep: torch.Tensor, **kwargs) -> torch.Tensor:
        """The reference UNet output for these inputs (no gradient)."""
        self.unet.disable_adapters()
        try:
            return self.unet(sample, timestep, **kwargs).sample
        finally:
            self.unet.enable_adapters()


class FrozenCopyReference:
    """A frozen copy of the initial UNet, for full fine-tuning (optionally in a lower precision)."""

    def __init__(self, unet: UNet2DConditionModel, dtype: torch.dtype | None = None) -> None:
        self.unet = copy.deepcopy(unet).requires_grad_(False).eval()
        if dtype is not None:
            self.unet.to(dtype)

    @torch.no_grad()
    def predict(self, sample: torch.Tensor, timestep: torch.Tensor, **kwargs) -> torch.Tensor:
        """The reference UNet output for these inputs (no gradient), in the caller's dtype."""
        dtype = self.unet.dtype
        kwargs = {k: _cast(v, dtype) for k, v in kwargs.items()}
        return self.unet(sample.to(dtype), timestep, **kwargs).sample.to(sample.dtype)


def _cast(value, dtype: torch.dtype):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    return value

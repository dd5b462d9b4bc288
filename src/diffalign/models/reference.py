"""The reference model of preference objectives: the adapter-disabled UNet (LoRA) or a frozen copy."""

from __future__ import annotations

import copy

import torch
from diffusers import UNet2DConditionModel
from peft.tuners.tuners_utils import BaseTunerLayer


class AdapterDisabledReference:
    """The base model as the trained UNet with its LoRA adapters switched off: no second UNet in memory.

    Exact: with peft the adapter-disabled forward equals the base UNet's forward. The adapter layers are
    found once: `unet.disable_adapters()` walks every module of the UNet at each call, which on a small
    model costs as much as a quarter of the reference forward itself.
    """

    def __init__(self, unet: UNet2DConditionModel) -> None:
        self.unet = unet  # the unwrapped module (not a DDP wrapper: no gradient sync on this pass)
        self._layers: list[BaseTunerLayer] | None = None

    def _set_adapters(self, enabled: bool) -> None:
        if self._layers is None:  # after the adapters exist (peft layers are replaced when adapters are added)
            self._layers = [m for m in self.unet.modules() if isinstance(m, BaseTunerLayer)]
        for layer in self._layers:
            layer.enable_adapters(enabled)

    @torch.no_grad()
    def predict(self, sample: torch.Tensor, timestep: torch.Tensor, **kwargs) -> torch.Tensor:
        """The reference UNet output for these inputs (no gradient)."""
        self._set_adapters(False)
        try:
            return self.unet(sample, timestep, **kwargs).sample
        finally:
            self._set_adapters(True)


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

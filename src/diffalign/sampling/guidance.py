"""The UNet's output for a batch of latents, with classifier-free guidance, for any UNet-like model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..models.conditioning import TextConditioning, unet_kwargs


def module_device_dtype(model: Any) -> tuple[torch.device | None, torch.dtype | None]:
    """The device and dtype of a module's first parameter (the UNet's `conv_in`, also under peft or DDP);
    (None, None) for a function (such as a reference's `predict`, which casts its inputs itself)."""
    if not isinstance(model, torch.nn.Module):
        return None, None
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def model_output(
    model: Callable[..., Any], sample: torch.Tensor, timestep: torch.Tensor, **kwargs: Any
) -> torch.Tensor:
    """Call a UNet-like model: an nn.Module returning `UNet2DConditionOutput` (or a tuple), or a function
    returning the tensor (such as a reference's `predict`)."""
    out = model(sample, timestep, **kwargs)
    if hasattr(out, "sample"):
        return out.sample
    return out[0] if isinstance(out, tuple) else out


def guided_output(
    model: Callable[..., Any],
    sample: torch.Tensor,
    timestep: torch.Tensor,
    cond: TextConditioning,
    uncond: TextConditioning | None,
    guidance: float,
    time_ids: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The model output (float32) at `sample` (B, C, h, w) and `timestep` (0-dim or (B,)):
    u + g·(c − u) with u the unconditional and c the conditional output when g > 1, else c alone.

    As diffusers' pipelines: guidance g ≤ 1 means no classifier-free guidance (one UNet pass), and the
    unconditional and conditional halves go through the UNet as one batch [uncond; cond]. `time_ids` (B, 6)
    are SDXL's micro-conditioning, shared by both halves; `dtype` is the UNet's input dtype.
    """
    dtype = dtype or sample.dtype
    if guidance > 1:
        if uncond is None:
            raise ValueError(f"guidance {guidance} > 1 needs the unconditional conditioning")
        both = TextConditioning.cat([uncond, cond])
        ids = None if time_ids is None else torch.cat([time_ids, time_ids])
        t = timestep if timestep.ndim == 0 else torch.cat([timestep, timestep])
        out = model_output(model, torch.cat([sample, sample]).to(dtype), t, **unet_kwargs(both, ids, dtype)).float()
        out_uncond, out_cond = out.chunk(2)
        return out_uncond + guidance * (out_cond - out_uncond)
    return model_output(model, sample.to(dtype), timestep, **unet_kwargs(cond, time_ids, dtype)).float()

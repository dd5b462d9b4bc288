"""The reference model of preference objectives: the adapter-disabled UNet (LoRA) or a frozen copy."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from peft.tuners.tuners_utils import BaseTunerLayer


class ReferenceModel:
    """What the training loop may ask of any reference, with no-op defaults: `refresh` before a micro-step
    (a pool picks its member), `save`/`restore` with checkpoints (a pool's kept states), and `base_unet`,
    a separate module holding the initial model (None when the base is the trained UNet with adapters off)."""

    base_unet: torch.nn.Module | None = None

    def predict(self, sample: torch.Tensor, timestep: torch.Tensor, **kwargs) -> torch.Tensor:
        """The reference UNet output for these inputs (no gradient)."""
        raise NotImplementedError

    def refresh(self, step: int, seed: int, micro_step: int) -> int | None:
        """Choose what serves as the reference of global micro-step `micro_step` (nothing to choose by default)."""
        del step, seed, micro_step
        return None

    def save(self, folder: Path, rank: int) -> None:
        """Write what the reference needs to resume into a checkpoint folder (nothing by default)."""
        del folder, rank

    def restore(self, folder: Path, rank: int) -> None:
        """Read back what `save` wrote (nothing by default)."""
        del folder, rank


class AdapterDisabledReference(ReferenceModel):
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


class CompiledAdapterReference(ReferenceModel):
    """The base model as the trained UNet's own compiled graphs (`train.compile`: its transformer blocks' or the
    whole UNet's) with every LoRA scale at zero.

    A compiled graph's fusions and roundings are its own: switching the adapters off, or running without
    gradients, selects another graph, whose outputs in bf16 differ from the trained model's by enough to start
    the DPO logit at +-1 or more with the LoRA still zero. So the reference runs the trained model's graphs:
    the same module, recording gradients like its forward, with peft's tensor scalings (`compile_unet`)
    set to zero in place, which selects no other graph. While the LoRA is zero its outputs equal the trained
    model's bit for bit; later they are exactly the base model's through those graphs. Inputs of the trained
    model's shapes (the pre-pass runs one micro-step per forward) reuse its graphs; others compile their own.
    """

    per_micro_step = True

    def __init__(self, unet: UNet2DConditionModel) -> None:
        self.unet = unet
        self._scalings: list[torch.Tensor] | None = None

    def _scaling_tensors(self) -> list[torch.Tensor]:
        if self._scalings is None:
            self._scalings = [
                value for m in self.unet.modules() if isinstance(m, BaseTunerLayer)
                for value in getattr(m, "scaling", {}).values()
            ]
            if not all(isinstance(value, torch.Tensor) for value in self._scalings):
                raise RuntimeError("the LoRA scalings are not tensors: call compile_unet on the UNet first")
        return self._scalings

    def predict(self, sample: torch.Tensor, timestep: torch.Tensor, **kwargs) -> torch.Tensor:
        """The reference UNet output for these inputs (no gradient flows out of it)."""
        scalings = self._scaling_tensors()
        saved = [value.detach().clone() for value in scalings]
        # through .data: the trained model's pending backward saved these tensors, and an in-place change
        # bumping their version would make it refuse to run, though they are restored before it does
        for value in scalings:
            value.data.zero_()
        try:
            with torch.enable_grad():
                return self.unet(sample, timestep, **kwargs).sample.detach()
        finally:
            for value, old in zip(scalings, saved):
                value.data.copy_(old)


def compile_unet(unet: UNet2DConditionModel, scope: str) -> None:
    """Compile `unet` in place (`torch.nn.Module.compile`, so its state dict keeps its names): its repeated
    transformer blocks (`scope="blocks"`, diffusers' regional compilation) or the whole UNet (`"unet"`). Its
    LoRA scalings first become tensors on the UNet's device (peft's `prepare_model_for_compiled_hotswap`), so
    that a `CompiledAdapterReference` can zero them without selecting another graph."""
    if scope not in ("blocks", "unet"):
        raise ValueError(f"train.compile must be 'blocks' or 'unet' to compile, not {scope!r}")
    if any(isinstance(m, BaseTunerLayer) for m in unet.modules()):
        from peft.utils.hotswap import prepare_model_for_compiled_hotswap

        prepare_model_for_compiled_hotswap(unet, check_compiled="error")
    if scope == "unet":
        unet.compile()
        return
    try:
        unet.compile_repeated_blocks()
    except ValueError as error:  # a UNet class without diffusers' `_repeated_blocks`, or none of them inside
        raise ValueError(f"train.compile=blocks: {error}. Use train.compile=unet for this model") from None


class FrozenCopyReference(ReferenceModel):
    """A frozen copy of the initial UNet, for full fine-tuning (optionally in a lower precision)."""

    def __init__(self, unet: UNet2DConditionModel, dtype: torch.dtype | None = None) -> None:
        self.unet = copy.deepcopy(unet).requires_grad_(False).eval()
        if dtype is not None:
            self.unet.to(dtype)

    @property
    def base_unet(self) -> torch.nn.Module:  # type: ignore[override]
        """The frozen copy: the initial model as a module of its own."""
        return self.unet

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

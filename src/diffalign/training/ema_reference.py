"""An exponential moving average of the run's LoRA weights as a reference (DGPO's dynamic reference, TDM-R1's).

After each optimizer step s the average moves towards the trained weights, ema += (1 − d)(weights − ema) with
d = min(`reference.ema_decay`, `reference.ema_ramp` × s) (the official DGPO code's 0.3 and 0.001: early on the
average is the last weights, later 70 % of them). It lives in a second peft adapter of the same UNet, as
`ReferencePool`'s states do; `base_predict` is the initial model (the adapters off), for a KL to the base. The
average is saved in every checkpoint, so a resumed run continues it exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

from ..config.schema import LoraConfig, ReferenceConfig
from .reference_pool import ADAPTER, ReferencePool

EMA_FILE = "reference_ema"


class EMAReference(ReferencePool):
    """The EMA of the trained LoRA weights, in the pool's second adapter (see the module docstring)."""

    def __init__(self, unet: UNet2DConditionModel, lora: LoraConfig, cfg: ReferenceConfig) -> None:
        super().__init__(unet, lora, cfg)
        self.ema = {n: p.detach().float().clone() for n, p in self.trained.items()}
        self.updated = 0  # the optimizer step the average last took

    def decay(self, step: int) -> float:
        """d at optimizer step `step`."""
        return min(self.cfg.ema_decay, self.cfg.ema_ramp * step)

    @torch.no_grad()
    def refresh(self, step: int, seed: int, micro_step: int) -> int:
        """Take the optimizer steps since the last update into the average (once per step); return `step`."""
        del seed, micro_step
        if step > self.updated:
            keep = 1.0 - self.decay(step)
            for name, weight in self.trained.items():
                self.ema[name].add_(keep * (weight.detach().float() - self.ema[name]))
            self.updated, self.loaded = step, None
        return step

    @torch.no_grad()
    def predict(self, sample: torch.Tensor, timestep: torch.Tensor, **kwargs) -> torch.Tensor:
        """The EMA weights' UNet output (no gradient)."""
        if self.loaded != self.updated:
            for name, slot in self.slots.items():
                slot.copy_(self.ema[name])
            self.loaded = self.updated
        self._activate(ADAPTER)
        try:
            return self.unet(sample, timestep, **kwargs).sample
        finally:
            self._activate("default")

    @torch.no_grad()
    def base_predict(self, sample: torch.Tensor, timestep: torch.Tensor, **kwargs) -> torch.Tensor:
        """The initial model's output: the UNet with its adapters off."""
        self.unet.disable_adapters()
        try:
            return self.unet(sample, timestep, **kwargs).sample
        finally:
            self.unet.enable_adapters()

    def save(self, folder: Path, rank: int) -> None:
        """Write the average into a checkpoint folder (the main process: every process holds the same)."""
        if rank != 0:
            return
        save_file({n: t.cpu().contiguous() for n, t in self.ema.items()}, str(folder / f"{EMA_FILE}.safetensors"))
        (folder / f"{EMA_FILE}.json").write_text(json.dumps({"updated": self.updated}))

    def restore(self, folder: Path, rank: int) -> None:
        """Read the average back from a checkpoint folder."""
        del rank
        path = folder / f"{EMA_FILE}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no {path.name}; this checkpoint was written by a run without an EMA "
                                    "reference")
        tensors = load_file(str(path))
        self.ema = {n: tensors[n].to(self.ema[n].device) for n in self.ema}
        self.updated = int(json.loads((folder / f"{EMA_FILE}.json").read_text())["updated"])
        self.loaded = None

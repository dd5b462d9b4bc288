"""Validation images during training: fixed prompts and seeds, the base and the tuned model side by side.

The base model's images are drawn once (they do not change); at every validation the tuned model
draws from the same initial noise. The grid (one row per prompt, its text on the left; base | tuned for
each seed, under captions naming seed and model) is saved as `OUTPUT_DIR/validation/step-NNNNNNNN.png`
and sent to the trackers that take images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config.schema import RunConfig
from ..evaluation.grid import comparison_grid, save_png
from ..models.loading import DiffusionParts, load_parts
from ..sampling.generate import generate
from ..sampling.pipeline import pipeline_from_parts

VALIDATION_DIR = "validation"


class Validator:
    """Samples the validation grid of a run; `parts` may lack the VAE and text encoders (cached runs)."""

    def __init__(self, cfg: RunConfig, parts: DiffusionParts, base_unet: torch.nn.Module | None,
                 device: torch.device) -> None:
        self.cfg, self.parts, self.device = cfg, parts, device
        self.base_unet = base_unet  # the frozen reference for full fine-tuning; None: LoRA adapters off
        self.base_images: np.ndarray | None = None
        v = cfg.validation
        self.prompts = [p for p in v.prompts for _ in range(v.seeds)]
        self.seeds = [s for _ in v.prompts for s in range(v.seeds)]

    def _pipeline(self, unet: torch.nn.Module):
        parts = self.parts
        if parts.vae is None:  # a cached run: load the encoders now, once
            loaded = load_parts(self.cfg.model, unet=False)
            parts.vae, parts.text_encoders, parts.tokenizers = loaded.vae, loaded.text_encoders, loaded.tokenizers
            for module in (parts.vae, *parts.text_encoders):
                module.to(self.device)
        return pipeline_from_parts(parts, unet)

    def _draw(self, unet: torch.nn.Module) -> np.ndarray:
        v = self.cfg.validation
        size = self.cfg.data.resolution
        return generate(self._pipeline(unet), self.prompts, self.seeds, v.steps, v.guidance, size, batch_size=8)

    def _draw_base(self, unet: torch.nn.Module) -> np.ndarray:
        if self.base_unet is not None:
            return self._draw(self.base_unet)
        if self.cfg.lora.enabled:
            unet.disable_adapters()
            try:
                return self._draw(unet)
            finally:
                unet.enable_adapters()
        # full fine-tuning without a reference (SFT): the base UNet is loaded for this one draw
        base = load_parts(self.cfg.model, encoders=False).unet.to(self.device)  # type: ignore[union-attr]
        images = self._draw(base)
        del base
        return images

    @torch.no_grad()
    def run(self, unet: torch.nn.Module, step: int, out_dir: Path, autocast, save: bool = True) -> tuple[Path, np.ndarray]:
        """Draw the tuned model's images (and, the first time, the base's); save (if `save`) and return the grid
        (uint8 HWC, captioned: `evaluation.grid.comparison_grid`)."""
        was_training = unet.training
        unet.eval()
        try:
            with autocast():
                if self.base_images is None:
                    self.base_images = self._draw_base(unet)
                tuned = self._draw(unet)
        finally:
            unet.train(was_training)
        v = self.cfg.validation
        drawn = (self.base_images, tuned)
        picture, _ = comparison_grid(
            list(v.prompts), list(range(v.seeds)), ["base", "tuned"],
            lambda row, seed, model: drawn[model][row * v.seeds + seed],
        )
        grid = np.array(picture)  # a writable copy for the trackers
        path = Path(out_dir) / VALIDATION_DIR / f"step-{step:08d}.png"
        if save:
            save_png(picture, path)
        return path, grid


def log_grid(accelerator, grid: np.ndarray, step: int) -> None:
    """Send the grid to every tracker that takes images (tensorboard, wandb, ...)."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"validation": grid[None]}, step=step, dataformats="NHWC")
        elif hasattr(tracker, "log_images"):
            tracker.log_images({"validation": [grid]}, step=step)

"""Generating images with a pipeline, one fixed seed per image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import DiffusionPipeline

from ..models.loading import DTYPES, resolve_source


def load_pipeline(model: str, device: str | None = None, dtype: str = "float32") -> DiffusionPipeline:
    """Load a text-to-image pipeline (hub id or local folder) on `device` (default: CUDA if available)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = DiffusionPipeline.from_pretrained(resolve_source(model), dtype=DTYPES[dtype])
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@torch.no_grad()
def generate(
    pipe: DiffusionPipeline,
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int = 20,
    guidance: float = 5.0,
    size: int | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Images (N, H, W, 3) uint8 for the (prompt, seed) pairs; image i starts from the noise of seeds[i].

    The same (prompt, seed) gives the same initial noise for every model of the same latent shape,
    which is what makes side-by-side comparisons fair.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    size = size or pipe.unet.config.sample_size * pipe.vae_scale_factor
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = slice(start, start + batch_size)
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds[chunk]]
        images = pipe(
            list(prompts[chunk]),
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=size,
            width=size,
            generator=generators,
            output_type="np",
        ).images
        out.append((np.clip(images, 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(out)

"""Generating images with a pipeline, one fixed seed per image: loading (model, LoRAs at scales, a fine-tuned
UNet, the sampler) and drawing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline

from ..models.loading import DTYPES, pipeline_hub_options, resolve_source
from ..models.lora_files import load_lora


# Sampler names -> diffusers scheduler class names; "default" keeps the pipeline's own scheduler.
SAMPLERS = {
    "default": None,
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}


def default_device() -> str:
    """CUDA when available, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """`auto` is float16 on CUDA and float32 elsewhere; any other name is returned as given (checked)."""
    if dtype == "auto":
        return "float16" if str(device).startswith("cuda") else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected auto or one of {', '.join(DTYPES)}")
    return dtype


def set_sampler(pipe: DiffusionPipeline, sampler: str) -> None:
    """Replace the pipeline's scheduler by `sampler` (a key of SAMPLERS), built from the same config."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r}: expected one of {', '.join(SAMPLERS)}")
    if SAMPLERS[sampler] is None:
        return
    import diffusers

    pipe.scheduler = getattr(diffusers, SAMPLERS[sampler]).from_config(pipe.scheduler.config)


def load_pipeline(
    model: str,
    device: str | None = None,
    dtype: str = "float32",
    loras: Sequence[tuple[str, float]] = (),
    unet: str | Path | None = None,
    sampler: str = "default",
) -> DiffusionPipeline:
    """Load a text-to-image pipeline (hub id or local folder) on `device` (default: CUDA if available).

    `unet`: a fine-tuned UNet folder that replaces the pipeline's; `loras`: (folder, scale) adapters
    loaded with `models.lora_files.load_lora` (refused unless they fit the model) and combined with
    `set_adapters`; `sampler`: see SAMPLERS.
    """
    device = device or default_device()
    dtype = resolve_dtype(dtype, device)
    source = resolve_source(model)
    pipe = DiffusionPipeline.from_pretrained(source, dtype=DTYPES[dtype], **pipeline_hub_options(source, "model"))
    if unet is not None:
        from diffusers import UNet2DConditionModel

        pipe.unet = UNet2DConditionModel.from_pretrained(Path(unet), dtype=DTYPES[dtype])
    names = []
    for n, (path, _) in enumerate(loras):
        load_lora(pipe, path, adapter_name=f"lora{n}")
        names.append(f"lora{n}")
    if names:
        pipe.set_adapters(names, adapter_weights=[float(s) for _, s in loras])
    set_sampler(pipe, sampler)
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
    negative_prompt: str = "",
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
            negative_prompt=[negative_prompt] * len(generators) if negative_prompt else None,
            output_type="np",
        ).images
        out.append((np.clip(images, 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(out)

"""A diffusers text-to-image pipeline assembled from loaded parts and a (possibly trained) UNet."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..models.loading import DiffusionParts
from .ddim import ddim_scheduler


def pipeline_from_parts(
    parts: DiffusionParts, unet: torch.nn.Module, scheduler: SchedulerMixin | None = None
) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """StableDiffusionPipeline (SD1.x/2.x) or StableDiffusionXLPipeline (SDXL) of the parts' VAE, text
    encoder(s) and tokenizer(s) around `unet`, sampling with `scheduler` (default: a DDIMScheduler with the
    parts' scheduler config). No safety checker; the progress bar is off. The modules are shared, not copied.
    """
    if parts.vae is None or len(parts.text_encoders) < (2 if parts.family == "sdxl" else 1):
        raise ValueError("a pipeline needs the VAE and the text encoders (these parts were loaded without them)")
    scheduler = scheduler if scheduler is not None else ddim_scheduler(parts)
    if parts.family == "sdxl":
        pipe = StableDiffusionXLPipeline(
            vae=parts.vae, text_encoder=parts.text_encoders[0], text_encoder_2=parts.text_encoders[1],
            tokenizer=parts.tokenizers[0], tokenizer_2=parts.tokenizers[1], unet=unet, scheduler=scheduler,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=parts.vae, text_encoder=parts.text_encoders[0], tokenizer=parts.tokenizers[0], unet=unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe

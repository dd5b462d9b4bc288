"""Turn a batch of pairs into what the UNet consumes: VAE latents, text conditioning, SDXL time ids."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.pairs import PairBatch
from ..models.conditioning import TextConditioning, encode_prompts, sdxl_time_ids
from ..models.loading import DiffusionParts


@dataclass
class EncodedPairs:
    """Latents (B, 4, h, w) and conditioning of winners and losers; the input of every pair method."""

    latents_w: torch.Tensor
    latents_l: torch.Tensor
    cond_w: TextConditioning
    cond_l: TextConditioning
    time_ids_w: torch.Tensor | None = None
    time_ids_l: torch.Tensor | None = None
    weight: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.latents_w)


@torch.no_grad()
def encode_latents(parts: DiffusionParts, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample the VAE posterior for images in [-1, 1] and scale (and shift, if the VAE has one) it."""
    vae = parts.vae
    posterior = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=generator, device=generator.device if generator else None)
    latents = posterior.mean + posterior.std * noise.to(posterior.mean.device, posterior.mean.dtype)
    shift = vae.config.get("shift_factor") or 0.0
    return ((latents - shift) * vae.config.scaling_factor).float()


def drop_captions(captions: list[str], drop: torch.Tensor) -> list[str]:
    """Replace the captions where `drop` is true by the empty caption."""
    return ["" if d else c for c, d in zip(captions, drop.tolist())]


@torch.no_grad()
def encode_pairs(
    parts: DiffusionParts,
    batch: PairBatch,
    empty_prompt_prob: float,
    generator: torch.Generator,
    resolution: int,
    device: torch.device,
) -> EncodedPairs:
    """VAE-encode both images and the captions; one empty-caption draw per pair (both images share it)."""
    drop = torch.rand(len(batch), generator=generator, device=generator.device) < empty_prompt_prob
    latents = encode_latents(parts, torch.cat([batch.pixels_w, batch.pixels_l]), generator).to(device)
    latents_w, latents_l = latents.chunk(2)
    captions_w, captions_l = drop_captions(batch.captions_w, drop), drop_captions(batch.captions_l, drop)
    if captions_w == captions_l:
        cond_w = encode_prompts(parts, captions_w)
        cond_l = cond_w
    else:
        both = encode_prompts(parts, captions_w + captions_l)
        cond_w, cond_l = both[: len(batch)], both[len(batch) :]
    time_ids_w = time_ids_l = None
    if parts.family == "sdxl":
        target = (resolution, resolution)
        time_ids_w = sdxl_time_ids(batch.original_sizes_w, batch.crops_w, target).to(device)
        time_ids_l = sdxl_time_ids(batch.original_sizes_l, batch.crops_l, target).to(device)
    weight = None if batch.weight is None else batch.weight.to(device)
    return EncodedPairs(latents_w, latents_l, cond_w, cond_l, time_ids_w, time_ids_l, weight)

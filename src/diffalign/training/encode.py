"""Turn a batch of pairs into what the UNet consumes: VAE latents, text conditioning, SDXL time ids."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.cache import CachedBatch
from ..data.pairs import PairBatch
from ..models.conditioning import TextConditioning, encode_prompts, sdxl_time_ids
from ..models.loading import DiffusionParts
from .randomness import BatchRandom


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


def latent_moments(parts: DiffusionParts, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the VAE posterior for images in [-1, 1], float32 (what the latent cache stores)."""
    vae = parts.vae
    with torch.no_grad():
        posterior = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    return posterior.mean.float(), posterior.std.float()


def sample_latents(parts: DiffusionParts, mean: torch.Tensor, std: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """A posterior sample `mean + std * noise`, shifted (if the VAE has a shift) and scaled as SD expects."""
    config = parts.vae_config
    shift = config.get("shift_factor") or 0.0
    return ((mean + std * noise.to(mean.device, mean.dtype)) - shift) * config["scaling_factor"]


def drop_captions(captions: list[str], drop: torch.Tensor) -> list[str]:
    """Replace the captions where `drop` is true by the empty caption."""
    return ["" if d else c for c, d in zip(captions, drop.tolist())]


def _assemble(
    parts: DiffusionParts,
    batch: PairBatch | CachedBatch,
    latents_w: torch.Tensor,
    latents_l: torch.Tensor,
    cond_w: TextConditioning,
    cond_l: TextConditioning,
    resolution: int,
    device: torch.device,
) -> EncodedPairs:
    """Add SDXL's time ids (original size, crop, target size) and the pair weights."""
    time_ids_w = time_ids_l = None
    if parts.family == "sdxl":
        target = (resolution, resolution)
        time_ids_w = sdxl_time_ids(batch.original_sizes_w, batch.crops_w, target).to(device)
        time_ids_l = sdxl_time_ids(batch.original_sizes_l, batch.crops_l, target).to(device)
    weight = None if batch.weight is None else batch.weight.to(device)
    return EncodedPairs(latents_w, latents_l, cond_w, cond_l, time_ids_w, time_ids_l, weight)


@torch.no_grad()
def encode_pairs(
    parts: DiffusionParts,
    batch: PairBatch,
    empty_prompt_prob: float,
    rand: BatchRandom,
    resolution: int,
    device: torch.device,
) -> EncodedPairs:
    """VAE-encode both images and the captions; one empty-caption draw per pair (both images share it).

    The draws, in order: the empty-caption coin, the winner's and the loser's posterior noise.
    """
    drop = rand.rand() < empty_prompt_prob
    mean, std = latent_moments(parts, torch.cat([batch.pixels_w, batch.pixels_l]))
    mean_w, mean_l = mean.chunk(2)
    std_w, std_l = std.chunk(2)
    latents_w = sample_latents(parts, mean_w, std_w, rand.randn(*mean_w.shape[1:])).to(device)
    latents_l = sample_latents(parts, mean_l, std_l, rand.randn(*mean_l.shape[1:])).to(device)
    captions_w, captions_l = drop_captions(batch.captions_w, drop), drop_captions(batch.captions_l, drop)
    if captions_w == captions_l:
        cond_w = encode_prompts(parts, captions_w)
        cond_l = cond_w
    else:
        both = encode_prompts(parts, captions_w + captions_l)
        cond_w, cond_l = both[: len(batch)], both[len(batch) :]
    return _assemble(parts, batch, latents_w, latents_l, cond_w, cond_l, resolution, device)


def _with_dropped(cond: TextConditioning, drop: torch.Tensor, empty: TextConditioning) -> TextConditioning:
    """`cond` with the rows where `drop` is true replaced by the empty caption's conditioning."""
    if not bool(drop.any()):
        return cond
    keep = (~drop).to(cond.hidden_states.device)
    hidden = torch.where(keep[:, None, None], cond.hidden_states, empty.hidden_states.to(cond.hidden_states))
    pooled = None
    if cond.pooled is not None:
        pooled = torch.where(keep[:, None], cond.pooled, empty.pooled.to(cond.pooled))  # type: ignore[union-attr]
    return TextConditioning(hidden, pooled)


def encode_cached(
    parts: DiffusionParts,
    batch: CachedBatch,
    empty: TextConditioning,
    empty_prompt_prob: float,
    rand: BatchRandom,
    resolution: int,
    device: torch.device,
) -> EncodedPairs:
    """`encode_pairs` for a batch read from the latent and text cache: the same draws in the same order
    (empty-caption coin, winner's and loser's posterior noise), so the same pairs give the same inputs."""
    drop = rand.rand() < empty_prompt_prob
    latents_w = sample_latents(parts, batch.mean_w.float(), batch.std_w.float(), rand.randn(*batch.mean_w.shape[1:]))
    latents_l = sample_latents(parts, batch.mean_l.float(), batch.std_l.float(), rand.randn(*batch.mean_l.shape[1:]))
    cond_w = _with_dropped(batch.cond_w, drop, empty)
    cond_l = cond_w if batch.cond_l is batch.cond_w else _with_dropped(batch.cond_l, drop, empty)
    cond_w, cond_l = (TextConditioning(c.hidden_states.to(device), None if c.pooled is None else c.pooled.to(device))
                      for c in (cond_w, cond_l))
    return _assemble(parts, batch, latents_w.to(device), latents_l.to(device), cond_w, cond_l, resolution, device)

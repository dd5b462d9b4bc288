"""Encode a batch of pairs for the UNet: VAE latents, text conditioning, SDXL time ids.

Whether the batch was read from images (VAE and text encoders run now) or from the latent cache, the
random draws are the same and in the same order (the empty-caption coin, then each side's posterior
noise, winner first), so the same pairs give the same inputs either way.
"""

from __future__ import annotations

import dataclasses

import torch

from ..data.record import PairBatch, Side
from ..models.conditioning import TextConditioning, encode_prompts, sdxl_time_ids
from ..models.loading import DiffusionParts
from .randomness import BatchRandom


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


def _moments(parts: DiffusionParts, sides: list[Side]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each side's posterior (mean, std): from the cache, or by one VAE pass over every side's pixels."""
    if sides[0].pixels is None:
        return [(side.mean.float(), side.std.float()) for side in sides]  # type: ignore[union-attr]
    mean, std = latent_moments(parts, torch.cat([side.pixels for side in sides]))  # type: ignore[misc]
    return list(zip(mean.chunk(len(sides)), std.chunk(len(sides))))


def _conditioning(
    parts: DiffusionParts, batch: PairBatch, sides: list[Side], drop: torch.Tensor, empty: TextConditioning | None,
    per_image_captions: bool,
) -> list[TextConditioning]:
    """What conditions each side: the prompts, or each image's own caption with `per_image_captions`;
    dropped rows get the empty caption. Sides with the same captions share one conditioning."""
    captions = [side.own_captions if per_image_captions else batch.captions for side in sides]
    if batch.prompt_cond is None:  # read from images: run the text encoder(s)
        texts = [drop_captions(c, drop) for c in captions]
        if all(t == texts[0] for t in texts):
            return [encode_prompts(parts, texts[0])] * len(sides)
        both = encode_prompts(parts, [c for t in texts for c in t])
        return [both[k * len(batch) : (k + 1) * len(batch)] for k in range(len(sides))]
    assert empty is not None, "a cached batch needs the empty caption's cached conditioning"
    prompt = _with_dropped(batch.prompt_cond, drop, empty)
    out = []
    for side, own in zip(sides, captions):
        cached = side.own_cond if per_image_captions and own != batch.captions else None
        out.append(prompt if cached is None else _with_dropped(cached, drop, empty))
    return out


@torch.no_grad()
def encode_batch(
    parts: DiffusionParts,
    batch: PairBatch,
    empty_prompt_prob: float,
    rand: BatchRandom,
    resolution: int,
    device: torch.device,
    *,
    empty: TextConditioning | None = None,
    per_image_captions: bool = False,
) -> PairBatch:
    """The batch with each side's latents, conditioning and (SDXL) time ids filled in, on `device`.

    One empty-caption draw per pair (every side of a pair shares it), then each side's posterior noise.
    `empty` is the empty caption's conditioning, needed for a batch read from the latent cache.
    `per_image_captions` (a method's capability, DCPO's) conditions each image on its own caption.
    """
    drop = rand.rand() < empty_prompt_prob
    sides = [side for side in (batch.w, batch.l) if side is not None]
    moments = _moments(parts, sides)
    latents = [sample_latents(parts, mean, std, rand.randn(*mean.shape[1:])).to(device) for mean, std in moments]
    if batch.l is None:
        rand.skip()  # the loser's draw: a winners-only batch then draws what the pair batch would have drawn
    conds = _conditioning(parts, batch, sides, drop, empty, per_image_captions)
    encoded = []
    for side, lat, cond in zip(sides, latents, conds):
        time_ids = None
        if parts.family == "sdxl":
            time_ids = sdxl_time_ids(side.original_sizes, side.crops, (resolution, resolution)).to(device)
        cond = TextConditioning(cond.hidden_states.to(device), None if cond.pooled is None else cond.pooled.to(device))
        encoded.append(dataclasses.replace(side, latents=lat, cond=cond, time_ids=time_ids))
    weight = None if batch.weight is None else batch.weight.to(device)
    return dataclasses.replace(batch, w=encoded[0], l=encoded[1] if len(encoded) > 1 else None, weight=weight)

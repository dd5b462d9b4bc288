"""The sample phase of an online round: the policy's DDIM(η) trajectories of this process's prompts.

Each prompt gets `rollout.images_per_prompt` trajectories, seeded by (seed, round, the prompt's position in
the round, image), so a round draws the same noise in any run and on any number of processes. The images of a
prompt start from one shared initial noise x_T (`rollout.initial_noise=shared`, D3PO: they differ only by the
η-noise of the steps) or each from its own (`distinct`, DDPO and GRPO groups).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch

from ...config.schema import RolloutConfig
from ...data.order import derive_seed
from ...models.loading import DiffusionParts
from ...sampling.trajectory import Trajectory, default_resolution, sample_trajectory, vae_scale_factor
from .rollouts import concat_trajectories

SHARED_NOISE_TAG = 0x1A7


def image_seeds(seed: int, round_: int, position: int, images: int) -> list[int]:
    """The seeds of the images of the prompt at `position` in round `round_`."""
    return [derive_seed(seed, round_, position, i) for i in range(images)]


def initial_noise(parts: DiffusionParts, resolution: int | None, seed: int) -> torch.Tensor:
    """One initial latent x_T (C, h, w) drawn from `seed`, at `resolution` (None: the model's default size)."""
    size = (resolution or default_resolution(parts, parts.unet)) // vae_scale_factor(parts)
    shape = (parts.vae_config["latent_channels"], size, size)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def sample_prompts(
    policy: torch.nn.Module, parts: DiffusionParts, prompts: list[str], positions: list[int], round_: int,
    rollout: RolloutConfig, seed: int, autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> Trajectory:
    """The trajectories of `prompts` (at `positions` in round `round_`), group-major, images decoded, in chunks
    of about `rollout.sample_batch_size` images (whole prompt groups)."""
    per = rollout.images_per_prompt
    group_size = max(1, rollout.sample_batch_size // per)
    chunks = []
    for start in range(0, len(prompts), group_size):
        group = range(start, min(start + group_size, len(prompts)))
        noise = None
        if rollout.initial_noise == "shared":
            noise = torch.stack([
                initial_noise(parts, rollout.resolution, derive_seed(seed, round_, positions[p], SHARED_NOISE_TAG))
                for p in group
            ]).repeat_interleave(per, dim=0)
        seeds = [s for p in group for s in image_seeds(seed, round_, positions[p], per)]
        with autocast():
            chunks.append(sample_trajectory(
                parts, policy, [prompts[p] for p in group for _ in range(per)], seeds, steps=rollout.steps,
                guidance=rollout.guidance, eta=rollout.eta, resolution=rollout.resolution, initial_latents=noise,
            ))
    return concat_trajectories(chunks)

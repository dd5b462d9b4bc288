"""DGPO: online group DPO on the policy's deterministic rollouts (objectives/dgpo.py).

Each round the policy draws a group of `rollout.images_per_prompt` images per prompt with DDIM η = 0 from distinct
initial noises (no log-probabilities, no stochastic sampler), the reward judges them and the advantage phase
normalises each reward within its group (GRPO's advantages; with several rewards as `rollout.reward_normalisation`
says). Training is Diffusion-DPO's: a micro-batch of whole groups, whose final latents x_0 are noised at a
timestep t ≥ `timestep_min`·T with one noise and one t per group (`shared_noise`, as the official code), the
policy's and the reference's denoising errors (conditional, no guidance: the official default "rollout with CFG,
training without") compared group against group. Each batch is trained at `timesteps` such draws, one micro-step
each, accumulated into one optimizer step; the draws are functions of the group's first seed, the pass and the
micro-step, so a resumed run draws the same.

The reference is the frozen base (the adapters off, or a frozen copy when fully fine-tuned) or, with
`reference=ema`, the EMA of the policy's LoRA weights (`training.ema_reference`); the clip's "old" errors also
come from the EMA weights, as in the official code. The KL term compares the policy's output with the base's.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ...config.objectives import DGPOConfig
from ...data.order import derive_seed
from ...data.record import Side
from ...objectives import ObjectiveOutput
from ...objectives.dgpo import dgpo_loss
from ...objectives.types import denoising_error
from ..advantages import group_advantages_of
from ..randomness import BatchRandom
from ..sources.online import OnlineRollouts, Rollouts
from .base import Method, TrainableModel, noise_pair, prediction_errors

DRAW_TAG = 0xD690


class DGPO(Method):
    """DGPO on online rollouts (see the module docstring)."""

    source = OnlineRollouts
    rollout_unit = "prompt"
    reference = "base"

    cfg: DGPOConfig

    def __init__(self, cfg: DGPOConfig) -> None:
        super().__init__(cfg)
        self.reference = "ema" if cfg.reference == "ema" or cfg.clip_range > 0 else "base"  # type: ignore[misc]

    def validate(self, run: Any) -> None:
        """Deterministic rollouts from distinct noises, groups of at least two images, LoRA for an EMA reference."""
        r = run.rollout
        if r.eta != 0:
            raise ValueError(f"objective dgpo learns from deterministic rollouts: set rollout.eta=0 (got {r.eta}); "
                             "a stochastic sampler is what DGPO does without")
        if r.initial_noise != "distinct":
            raise ValueError("objective dgpo samples deterministically, so a group sharing its initial noise would be "
                             "one image repeated: set rollout.initial_noise=distinct")
        if r.images_per_prompt < 2:
            raise ValueError("objective dgpo splits each prompt's group into better and worse images: set "
                             f"rollout.images_per_prompt to at least 2 (got {r.images_per_prompt})")
        if self.reference == "ema" and not run.lora.enabled:
            why = "reference=ema" if self.cfg.reference == "ema" else f"clip_range={self.cfg.clip_range}"
            raise ValueError(f"objective dgpo with {why} keeps an EMA of the LoRA weights: set lora.enabled=true")

    def micro_steps_per_batch(self, run: Any) -> int:
        """The noised timesteps each batch is trained at: `timesteps`."""
        del run
        return self.cfg.timesteps

    def advantages(self, rollouts: Rollouts) -> torch.Tensor:
        """The rewards (P, I) normalised within each prompt's group (several rewards as the round says:
        `group_advantages_of`)."""
        return group_advantages_of(rollouts, std=self.cfg.std).to(rollouts.rewards.device)

    def draws(self, batch: Rollouts, shape: tuple[int, ...], num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The micro-step's noise (P·I, *shape) and timesteps (P·I,): one of each per group with `shared_noise`,
        else per image, drawn from the first seed of each (group or image), the pass and the micro-step."""
        seeds = batch.trajectories.seeds
        per = batch.images_per_prompt if self.cfg.shared_noise else 1
        low = min(math.ceil(self.cfg.timestep_min * num_train_timesteps), num_train_timesteps - 1)
        noises, steps = [], []
        for first in range(0, len(seeds), per):
            generator = torch.Generator().manual_seed(derive_seed(seeds[first], batch.epoch, batch.substep, DRAW_TAG))
            noise = torch.randn(shape, generator=generator)
            t = int(torch.randint(low, num_train_timesteps, (), generator=generator))
            noises += [noise] * per
            steps += [t] * per
        return torch.stack(noises), torch.tensor(steps)

    def __call__(self, model: TrainableModel, batch: Rollouts, rand: BatchRandom) -> ObjectiveOutput:
        del rand  # the draws are functions of each group's seed, the pass and the micro-step
        trajectories = batch.trajectories
        x0 = trajectories.latents[:, -1]
        device = x0.device
        noise, t = self.draws(batch, tuple(x0.shape[1:]), model.noise_scheduler.config.num_train_timesteps)
        side = Side(own_captions=trajectories.prompts, latents=x0, cond=trajectories.cond,
                    time_ids=trajectories.time_ids)
        noised = noise_pair(model, side, None, noise.to(device, x0.dtype), t.to(device))
        output = model.predict(noised.noisy, noised.t, **noised.kwargs)
        err = prediction_errors(model, output, noised)
        if model.reference is None:
            raise ValueError("objective dgpo needs its reference model, and the run built none")
        reference = model.reference
        with torch.no_grad():
            base = reference.base_predict if self.reference == "ema" else reference.predict
            base_out = base(noised.noisy, noised.t, **noised.kwargs)
            ema_out = reference.predict(noised.noisy, noised.t, **noised.kwargs) if self.reference == "ema" else None
        ref_out = ema_out if self.cfg.reference == "ema" else base_out
        ref_err = prediction_errors(model, ref_out, noised)
        old_err = prediction_errors(model, ema_out, noised) if self.cfg.clip_range > 0 else None
        kl = denoising_error(output, base_out) if self.cfg.kl_weight > 0 else None
        assert batch.advantages is not None, "the advantage phase did not run"
        groups = torch.arange(len(batch), device=device).repeat_interleave(batch.images_per_prompt)
        out = dgpo_loss(err, ref_err, batch.advantages.flatten().to(device), groups, beta=self.cfg.beta,
                        advantage_clip=self.cfg.advantage_clip, old_err=old_err, clip_range=self.cfg.clip_range,
                        kl=kl, kl_weight=self.cfg.kl_weight)
        out.metrics.update(reward=batch.rewards.float().nanmean())
        return out

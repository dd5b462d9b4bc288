"""Diffusion-DPO: winner and loser noised with one noise and one timestep per pair, the policy's and the
reference's denoising errors compared by `objectives.dpo.dpo_loss`."""

from __future__ import annotations

import torch

from ...config.objectives import DPOConfig
from ...data.record import PairBatch
from ...models.conditioning import TextConditioning, unet_kwargs
from ...models.prediction import training_target
from ...objectives import ObjectiveOutput, denoising_error, dpo_loss
from ..randomness import BatchRandom
from .base import Method, TrainableModel, sample_noise_and_timesteps


class DPO(Method):
    """Diffusion-DPO on offline pairs against the initial model; the prompt conditions both images."""

    data = "pairs"
    reference = "base"

    def __init__(self, cfg: DPOConfig) -> None:
        super().__init__(cfg)
        self.beta = cfg.beta

    def __call__(self, model: TrainableModel, batch: PairBatch, rand: BatchRandom) -> ObjectiveOutput:
        w, l_ = batch.w, batch.loser
        n = len(batch)
        noise, t = sample_noise_and_timesteps(w.latents, model.noise_scheduler, rand)
        latents = torch.cat([w.latents, l_.latents])
        noise, t = noise.repeat(2, 1, 1, 1), t.repeat(2)
        noisy = model.noise_scheduler.add_noise(latents, noise, t)
        target = training_target(model.noise_scheduler, latents, noise, t, model.prediction_type)
        time_ids = None if w.time_ids is None else torch.cat([w.time_ids, l_.time_ids])
        kwargs = unet_kwargs(TextConditioning.cat([w.cond, l_.cond]), time_ids)
        err = denoising_error(model.predict(noisy, t, **kwargs), target)
        assert model.reference is not None
        ref_err = denoising_error(model.reference.predict(noisy, t, **kwargs), target)
        return dpo_loss(err[:n], err[n:], ref_err[:n], ref_err[n:], self.beta, batch.weight)

"""SePPO: winners only; an earlier checkpoint of the run samples each winner's caption, and the anchor-based
criterion decides whether that sample is learned as a loser (Diffusion-DPO) or as a second winner (SFT).

The method declares winners-only data, a reference pool (`reference.*`: every N steps the LoRA state is kept,
the newest K beside the initial model, one chosen per micro-step; the paper's default is uniform over all of
them) and reference samples (`sources.reference_samples`: the chosen reference draws one image per winner
with the `rollout.*` sampler). Winner and sample are noised with one noise and one timestep per pair (as
Diffusion-DPO's pairs; `share_noise: false` draws each its own), both conditioned on the pair's caption.
"""

from __future__ import annotations

import torch

from ...config.objectives import SePPOConfig
from ...data.record import PairBatch
from ...models.conditioning import TextConditioning, unet_kwargs
from ...models.prediction import training_target
from ...objectives import ObjectiveOutput, denoising_error, seppo_loss
from ..randomness import BatchRandom
from .base import Method, TrainableModel, sample_noise_and_timesteps


class SePPO(Method):
    """SePPO on the winners of the data, against reference samples of earlier checkpoints."""

    data = "winners"
    reference = "pool"
    reference_samples = True

    def __init__(self, cfg: SePPOConfig) -> None:
        super().__init__(cfg)

    def __call__(self, model: TrainableModel, batch: PairBatch, rand: BatchRandom) -> ObjectiveOutput:
        w, r = batch.w, batch.loser
        n = len(batch)
        noise, t = sample_noise_and_timesteps(w.latents, model.noise_scheduler, rand)
        if self.cfg.share_noise:
            noise_r, t_r = noise, t
        else:
            noise_r, t_r = sample_noise_and_timesteps(r.latents, model.noise_scheduler, rand)
        latents = torch.cat([w.latents, r.latents])
        noise, t = torch.cat([noise, noise_r]), torch.cat([t, t_r])
        noisy = model.noise_scheduler.add_noise(latents, noise, t)
        target = training_target(model.noise_scheduler, latents, noise, t, model.prediction_type)
        time_ids = None if w.time_ids is None else torch.cat([w.time_ids, r.time_ids])
        kwargs = unet_kwargs(TextConditioning.cat([w.cond, r.cond]), time_ids)
        err = denoising_error(model.predict(noisy, t, **kwargs), target)
        assert model.reference is not None
        ref_err = denoising_error(model.reference.predict(noisy, t, **kwargs), target)
        out = seppo_loss(err[:n], err[n:], ref_err[:n], ref_err[n:], self.cfg.beta, self.cfg.criterion, batch.weight)
        current = getattr(model.reference, "current", None)
        if current is not None:
            out.metrics["reference_step"] = torch.tensor(float(current))
        return out

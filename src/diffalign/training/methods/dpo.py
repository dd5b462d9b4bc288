"""Diffusion-DPO: winner and loser noised with one noise and one timestep per pair, the policy's and the
reference's denoising errors compared by `objectives.dpo.dpo_loss` (its sigmoid, IPO or hinge form:
`objective.loss`)."""

from __future__ import annotations

from ...config.objectives import DPOConfig
from ...data.record import PairBatch
from ...objectives import ObjectiveOutput, dpo_loss
from ..randomness import BatchRandom
from .base import Method, TrainableModel, pair_errors, sample_noise_and_timesteps


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
        err, ref_err = pair_errors(model, w, l_, noise, t, space=self.cfg.error_space)
        return dpo_loss(err[:n], err[n:], ref_err[:n], ref_err[n:], self.beta, batch.weight, form=self.cfg.loss)

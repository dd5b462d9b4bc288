"""Diffusion-DPO: winner and loser noised with one noise and one timestep per pair, the policy's and the
reference's denoising errors compared by `objectives.dpo.dpo_loss` (its sigmoid, IPO or hinge form:
`objective.loss`)."""

from __future__ import annotations

from typing import Any

from ...config.objectives import DPOConfig
from ...data.record import PairBatch
from ...objectives import ObjectiveOutput, dpo_loss
from ..randomness import BatchRandom
from .base import Method, NoisedPair, TrainableModel, noise_pair, prediction_errors, sample_noise_and_timesteps


class DPO(Method):
    """Diffusion-DPO on offline pairs against the initial model; the prompt conditions both images."""

    reference = "base"
    precomputable_reference = True

    def __init__(self, cfg: DPOConfig) -> None:
        super().__init__(cfg)
        self.beta = cfg.beta
        self.error_space = cfg.error_space

    def reference_key(self) -> dict[str, Any]:
        return {"name": self.cfg.name, "error_space": self.error_space}

    def noised(self, model: TrainableModel, batch: PairBatch, rand: BatchRandom) -> NoisedPair:
        noise, t = sample_noise_and_timesteps(batch.w.latents, model.noise_scheduler, rand)
        return noise_pair(model, batch.w, batch.loser, noise, t)

    def __call__(self, model: TrainableModel, batch: PairBatch, rand: BatchRandom) -> ObjectiveOutput:
        n = len(batch)
        noised = self.noised(model, batch, rand)
        err = prediction_errors(model, model.predict(noised.noisy, noised.t, **noised.kwargs), noised, self.error_space)
        ref_err = model.reference_errors(noised, self.error_space, rand)
        return dpo_loss(err[:n], err[n:], ref_err[:n], ref_err[n:], self.beta, batch.weight, form=self.cfg.loss)

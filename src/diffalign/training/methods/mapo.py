"""MaPO: winner and loser noised with one noise and one timestep per pair, as Diffusion-DPO, and only the
trained model's errors compared by `objectives.mapo.mapo_loss`; no reference model is built or called."""

from __future__ import annotations

from ...config.objectives import MaPOConfig
from ...data.record import PairBatch
from ...objectives import ObjectiveOutput, mapo_loss
from ..randomness import BatchRandom
from .base import Method, TrainableModel, noise_pair, prediction_errors, sample_noise_and_timesteps


class MaPO(Method):
    """Margin-aware preference optimisation on offline pairs, reference-free."""

    reference = "none"

    def __init__(self, cfg: MaPOConfig) -> None:
        super().__init__(cfg)

    def __call__(self, model: TrainableModel, batch: PairBatch, rand: BatchRandom) -> ObjectiveOutput:
        n = len(batch)
        noise, t = sample_noise_and_timesteps(batch.w.latents, model.noise_scheduler, rand)
        noised = noise_pair(model, batch.w, batch.loser, noise, t)
        err = prediction_errors(model, model.predict(noised.noisy, noised.t, **noised.kwargs), noised)
        return mapo_loss(err[:n], err[n:], self.cfg.beta, self.cfg.snr, self.cfg.scale)

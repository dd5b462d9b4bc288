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
from ...objectives import ObjectiveOutput, seppo_loss
from ..randomness import BatchRandom
from ..sources.reference_samples import ReferenceSampled
from .base import Method, TrainableModel, pair_errors, sample_noise_and_timesteps


class SePPO(Method):
    """SePPO on the winners of the data, against reference samples of earlier checkpoints."""

    source = ReferenceSampled
    reference = "pool"

    cfg: SePPOConfig

    def __call__(self, model: TrainableModel, batch: PairBatch, rand: BatchRandom) -> ObjectiveOutput:
        w, r = batch.w, batch.loser
        n = len(batch)
        noise, t = sample_noise_and_timesteps(w.latents, model.noise_scheduler, rand)
        own = () if self.cfg.share_noise else sample_noise_and_timesteps(r.latents, model.noise_scheduler, rand)
        err, ref_err = pair_errors(model, w, r, noise, t, *own)
        out = seppo_loss(err[:n], err[n:], ref_err[:n], ref_err[n:], self.cfg.beta, self.cfg.criterion, batch.weight)
        current = getattr(model.reference, "current", None)
        if current is not None:
            out.metrics["reference_step"] = torch.tensor(float(current))
        return out

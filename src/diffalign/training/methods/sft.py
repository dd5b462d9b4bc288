"""SFT: the plain diffusion loss on the preferred image of each pair (Diffusion-DPO's baseline)."""

from __future__ import annotations

from ...data.record import PairBatch
from ...models.conditioning import unet_kwargs
from ...models.prediction import training_target
from ...objectives import ObjectiveOutput, sft_loss
from ..randomness import BatchRandom
from ..sources.offline import OfflineWinners
from .base import Method, TrainableModel, sample_noise_and_timesteps


class SFT(Method):
    """Supervised fine-tuning on the winners (no rejected image is read: an image folder with captions
    trains too); no reference model."""

    source = OfflineWinners
    reference = "none"

    def __call__(self, model: TrainableModel, batch: PairBatch, rand: BatchRandom) -> ObjectiveOutput:
        w = batch.w
        noise, t = sample_noise_and_timesteps(w.latents, model.noise_scheduler, rand)
        noisy = model.noise_scheduler.add_noise(w.latents, noise, t)
        target = training_target(model.noise_scheduler, w.latents, noise, t, model.prediction_type)
        prediction = model.predict(noisy, t, **unet_kwargs(w.cond, w.time_ids))
        return sft_loss(prediction, target)

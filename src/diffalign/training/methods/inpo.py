"""DDIM-InPO: Diffusion-DPO on latents reached by DDIM inversion of the winner and the loser.

Per pair one timestep t_s (shared by winner and loser) is drawn; the current policy UNet, without gradient,
inverts each image through the steps of the grid below t_s (`sampling.inversion`), conditioned on the same,
possibly dropped, caption as the loss and without guidance, optionally with η-noise from a generator seeded
per image from the micro-step's random source. The loss compares the noise predicted at the inverted latent
with τ_t (`objectives.inpo.inversion_target`, float32), ε̂ derived from v̂ on v-prediction models.

Fixes of the official code (JaydenLyh/InPO train.py), each documented at its setting:
- every pair is inverted to its own t_s (the official loop uses the first pair's t for the whole batch, right
  only for per-GPU batch 1);
- `inversion_mode="consistent"` (default): the UNet inverts at each step's target level, never at a negative
  timestep, and the loss runs at the level the inversion reached, so the latent's noise level, the UNet's
  timestep and τ's timestep agree; `"official"` keeps the papers' behaviour (UNet at the source level, −99
  first; the loss at t_s although the latent sits at the level reached) for exact reproduction;
- τ is computed in float32 (the official code casts ᾱ to fp16).
"""

from __future__ import annotations

import torch

from ...config.objectives import InPOConfig
from ...data.order import derive_seed
from ...data.record import PairBatch
from ...models.conditioning import TextConditioning, unet_kwargs
from ...objectives import ObjectiveOutput, denoising_error
from ...objectives.inpo import inpo_loss, inversion_target
from ...sampling.ddim import convert_prediction
from ...sampling.inversion import InversionGrid, inverse_scheduler, inversion_grid, invert
from ..randomness import BatchRandom
from .base import Method, TrainableModel


class InPO(Method):
    """InPO on offline pairs against the initial model (adapters off for LoRA, a frozen copy otherwise)."""

    reference = "base"

    cfg: InPOConfig

    def __init__(self, cfg: InPOConfig) -> None:
        super().__init__(cfg)
        self._grid: InversionGrid | None = None

    def grid(self, model: TrainableModel) -> InversionGrid:
        """The inverse-step grid of the model's scheduler in the configured mode (built once)."""
        if self._grid is None:
            scheduler = inverse_scheduler(model.noise_scheduler.config)
            self._grid = inversion_grid(scheduler, self.cfg.inversion_steps, self.cfg.inversion_mode)
        return self._grid

    def errors(self, model: TrainableModel, batch: PairBatch, rand: BatchRandom) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample errors (2B,) of the policy and the reference against τ, winners then losers."""
        w, l_ = batch.w, batch.loser
        scheduler = model.noise_scheduler
        t = rand.randint(scheduler.config.num_train_timesteps).repeat(2)
        seeds = rand.seeds()
        latents = torch.cat([w.latents, l_.latents])
        cond = TextConditioning.cat([w.cond, l_.cond])
        time_ids = None if w.time_ids is None else torch.cat([w.time_ids, l_.time_ids])
        generators = None
        if self.cfg.inversion_eta > 0:  # one generator per image: the winner's and the loser's noise differ
            generators = [torch.Generator().manual_seed(derive_seed(s, side)) for side in (0, 1) for s in seeds]
        inverted = invert(model.unet, scheduler.config, latents, t, cond, time_ids=time_ids,
                          renoise_steps=self.cfg.renoise_steps, eta=self.cfg.inversion_eta, generator=generators,
                          grid=self.grid(model))
        level = inverted.timesteps if self.cfg.inversion_mode == "consistent" else t.to(latents.device)
        alpha = scheduler.alphas_cumprod.to(latents.device)[level].float()
        target = inversion_target(inverted.latents, latents, alpha)
        x_t = inverted.latents.to(latents.dtype)
        kwargs = unet_kwargs(cond, time_ids)

        def eps(output: torch.Tensor) -> torch.Tensor:
            return convert_prediction(output.float(), x_t.float(), alpha, model.prediction_type)[1]

        err = denoising_error(eps(model.predict(x_t, level, **kwargs)), target)
        if model.reference is None:
            raise ValueError("InPO needs its reference model")
        ref_err = denoising_error(eps(model.reference.predict(x_t, level, **kwargs)), target)
        return err, ref_err

    def __call__(self, model: TrainableModel, batch: PairBatch, rand: BatchRandom) -> ObjectiveOutput:
        n = len(batch)
        err, ref_err = self.errors(model, batch, rand)
        return inpo_loss(err[:n], err[n:], ref_err[:n], ref_err[n:], self.cfg.beta, batch.weight)

"""How each objective turns a batch into a loss: noising, model and reference predictions, the loss.

A method is a small object with `needs_reference` and `__call__(model, pairs, rand)`; the
training loop knows nothing else about it. Every random draw goes through `rand` (a `BatchRandom`),
one draw per pair, so the step does not depend on how the batch is split over processes. New objectives register with `@register_method(name)`
under the same name as their config variant (`objective.name`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from diffusers import DDPMScheduler

from ..config.schema import DPOObjectiveConfig, ObjectiveConfig, SFTObjectiveConfig
from ..models.conditioning import TextConditioning, unet_kwargs
from ..models.prediction import training_target
from ..objectives import ObjectiveOutput, denoising_error, diffusion_dpo_loss, sft_loss
from .encode import EncodedPairs
from .randomness import BatchRandom


class Reference(Protocol):
    def predict(self, sample: torch.Tensor, timestep: torch.Tensor, **kwargs: Any) -> torch.Tensor: ...


@dataclass
class TrainableModel:
    """The UNet being trained (possibly wrapped by accelerate), its reference and the noise schedule."""

    unet: torch.nn.Module
    reference: Reference | None
    noise_scheduler: DDPMScheduler
    prediction_type: str

    def predict(self, sample: torch.Tensor, timestep: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """The trained UNet's output (with gradient)."""
        return self.unet(sample, timestep, **kwargs).sample


def sample_noise_and_timesteps(
    latents: torch.Tensor, scheduler: DDPMScheduler, rand: BatchRandom
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian noise like `latents` (one row per pair) and uniform timesteps in [0, T), one per pair."""
    noise = rand.randn(*latents.shape[1:]).to(latents.device, latents.dtype)
    t = rand.randint(scheduler.config.num_train_timesteps).to(latents.device)
    return noise, t


class Method(Protocol):
    needs_reference: bool

    def __call__(self, model: TrainableModel, pairs: EncodedPairs, rand: BatchRandom) -> ObjectiveOutput: ...


_METHODS: dict[str, Callable[[Any], Method]] = {}


def register_method(name: str) -> Callable:
    """Class decorator: the method used when `objective.name == name`."""

    def decorate(cls: Callable[[Any], Method]) -> Callable[[Any], Method]:
        _METHODS[name] = cls
        return cls

    return decorate


def build_method(cfg: ObjectiveConfig) -> Method:
    """The method object for an objective config."""
    if cfg.name not in _METHODS:
        raise KeyError(f"no training method for objective {cfg.name!r}; known: {sorted(_METHODS)}")
    return _METHODS[cfg.name](cfg)


@register_method("dpo")
class DiffusionDPO:
    """Diffusion-DPO: one noise and one timestep per pair, shared by winner and loser."""

    needs_reference = True

    def __init__(self, cfg: DPOObjectiveConfig) -> None:
        self.beta = cfg.beta

    def __call__(self, model: TrainableModel, pairs: EncodedPairs, rand: BatchRandom) -> ObjectiveOutput:
        n = len(pairs)
        noise, t = sample_noise_and_timesteps(pairs.latents_w, model.noise_scheduler, rand)
        latents = torch.cat([pairs.latents_w, pairs.latents_l])
        noise, t = noise.repeat(2, 1, 1, 1), t.repeat(2)
        noisy = model.noise_scheduler.add_noise(latents, noise, t)
        target = training_target(model.noise_scheduler, latents, noise, t, model.prediction_type)
        time_ids = None if pairs.time_ids_w is None else torch.cat([pairs.time_ids_w, pairs.time_ids_l])
        kwargs = unet_kwargs(TextConditioning.cat([pairs.cond_w, pairs.cond_l]), time_ids)
        err = denoising_error(model.predict(noisy, t, **kwargs), target)
        assert model.reference is not None
        ref_err = denoising_error(model.reference.predict(noisy, t, **kwargs), target)
        return diffusion_dpo_loss(err[:n], err[n:], ref_err[:n], ref_err[n:], self.beta, pairs.weight)


@register_method("sft")
class SupervisedOnWinners:
    """SFT baseline: the plain diffusion loss on the preferred image of each pair."""

    needs_reference = False

    def __init__(self, cfg: SFTObjectiveConfig) -> None:
        del cfg

    def __call__(self, model: TrainableModel, pairs: EncodedPairs, rand: BatchRandom) -> ObjectiveOutput:
        noise, t = sample_noise_and_timesteps(pairs.latents_w, model.noise_scheduler, rand)
        noisy = model.noise_scheduler.add_noise(pairs.latents_w, noise, t)
        target = training_target(model.noise_scheduler, pairs.latents_w, noise, t, model.prediction_type)
        prediction = model.predict(noisy, t, **unet_kwargs(pairs.cond_w, pairs.time_ids_w))
        return sft_loss(prediction, target)

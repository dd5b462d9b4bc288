"""What the UNet is trained to predict, for each prediction type of the diffusers schedulers."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler


def training_target(
    scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The regression target at x_t = sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) ε.

    epsilon: ε (SD1.5, SDXL); v_prediction: v = sqrt(ᾱ_t) ε - sqrt(1-ᾱ_t) x0 (SD2.1-768);
    sample: x0.
    """
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if prediction_type == "sample":
        return latents
    raise ValueError(f"unknown prediction_type {prediction_type!r} (epsilon, v_prediction or sample)")

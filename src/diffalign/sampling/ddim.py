"""One DDIM(η) denoising step x_t → x_{t-1} with the Gaussian log-probability of the step.

The policy of a DDIM(η) sampler is the Gaussian  x_{t-1} ~ N(μ_θ(x_t, t), σ_t² I)  with

    x̂0  = the model output converted to a clean-latent prediction (epsilon, v_prediction or sample),
          clipped or thresholded as the scheduler config says
    ε̂   = the model output converted to a noise prediction (not recomputed from the clipped x̂0,
          as in diffusers' default `use_clipped_model_output=False`)
    σ_t² = η² · (1 − ᾱ_prev)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_prev)
    μ    = √ᾱ_prev · x̂0 + √(1 − ᾱ_prev − σ_t²) · ε̂

where ᾱ are the scheduler's `alphas_cumprod` (ᾱ_prev = `final_alpha_cumprod` for a negative previous
timestep). This is exactly `DDIMScheduler.step`, written per sample so that each sample of a batch may be at
its own timestep, and returning μ and σ_t so that the log-density of x_{t-1} is available (D3PO, DDPO).

The log-probability is the MEAN over all non-batch elements of the elementwise Gaussian log-density (the
D3PO convention: β = 0.1 is calibrated to a mean, not a sum). At η = 0 the step is deterministic (σ_t = 0)
and has no density: `log_prob` is None then, and asking to re-score a given x_{t-1} at η = 0 is an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor

from ..models.loading import DiffusionParts

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class DDIMStep:
    """The result of one DDIM step for a batch of B samples.

    prev_sample: x_{t-1} (B, C, h, w) (the given one when re-scoring); pred_original_sample: x̂0 after
    clipping/thresholding; mean: μ (B, C, h, w); std: σ_t (B,); log_prob: (B,) mean over (C, h, w) of the
    Gaussian log-density of prev_sample, None at η = 0. Float32 (float64 if the sample was float64).
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    log_prob: torch.Tensor | None


def ddim_scheduler(parts: DiffusionParts) -> DDIMScheduler:
    """A DDIMScheduler with the noise schedule and prediction type of the loaded model (its scheduler config)."""
    return DDIMScheduler.from_config(parts.noise_scheduler.config)


def per_sample(value: int | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """A timestep (int, 0-dim or (B,) tensor) as a long tensor of shape (B,)."""
    t = torch.as_tensor(value, device=device).long().reshape(-1)
    if t.numel() == 1:
        return t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"{t.numel()} timesteps for a batch of {batch}")
    return t


def alpha_bar(alphas_cumprod: torch.Tensor, t: torch.Tensor, before_zero: torch.Tensor) -> torch.Tensor:
    """ᾱ at the timesteps t (B,), with `before_zero` (the scheduler's final/initial ᾱ) where t < 0."""
    alphas_cumprod = alphas_cumprod.to(t.device)
    return torch.where(t >= 0, alphas_cumprod[t.clamp(min=0)], before_zero.to(t.device, alphas_cumprod.dtype))


def batch_view(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample (B,) tensor viewed as (B, 1, 1, …) to broadcast against `like` (B, C, h, w)."""
    return x.reshape(-1, *([1] * (like.ndim - 1)))


def convert_prediction(
    model_output: torch.Tensor, sample: torch.Tensor, alpha_prod: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂0, ε̂) from a model output at noise level ᾱ (B,) for the scheduler's prediction type.

    epsilon: the output is ε; v_prediction: v = √ᾱ ε − √(1−ᾱ) x0; sample: the output is x0.
    """
    a = batch_view(alpha_prod, sample)
    b = 1 - a
    if prediction_type == "epsilon":
        return (sample - b.sqrt() * model_output) / a.sqrt(), model_output
    if prediction_type == "v_prediction":
        return a.sqrt() * sample - b.sqrt() * model_output, a.sqrt() * model_output + b.sqrt() * sample
    if prediction_type == "sample":
        return model_output, (sample - a.sqrt() * model_output) / b.sqrt()
    raise ValueError(f"unknown prediction_type {prediction_type!r} (epsilon, v_prediction or sample)")


def clip_prediction(scheduler: DDIMScheduler, pred_original_sample: torch.Tensor) -> torch.Tensor:
    """x̂0 dynamically thresholded or clipped to ±clip_sample_range, as the scheduler config says (else as is)."""
    config = scheduler.config
    if config.get("thresholding", False):
        return scheduler._threshold_sample(pred_original_sample)  # diffusers' own per-sample quantile rule
    if config.get("clip_sample", False):
        return pred_original_sample.clamp(-config.clip_sample_range, config.clip_sample_range)
    return pred_original_sample


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Mean over the non-batch elements of log N(x; mean, std²) with a per-sample std (B,): shape (B,)."""
    s = batch_view(std, x)
    elementwise = -((x - mean) ** 2) / (2 * s**2) - s.log() - LOG_SQRT_2PI
    return elementwise.flatten(1).mean(dim=1)


def ddim_step_with_logprob(
    scheduler: DDIMScheduler,
    model_output: torch.Tensor,
    timestep: int | torch.Tensor,
    sample: torch.Tensor,
    *,
    eta: float = 1.0,
    prev_timestep: int | torch.Tensor | None = None,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    variance_noise: torch.Tensor | None = None,
) -> DDIMStep:
    """One DDIM(η) step from x_t = `sample` (B, C, h, w) at `timestep` (int or (B,)) and its log-probability.

    `model_output` is the (guided) UNet output in the scheduler's prediction type. `prev_timestep` defaults
    to t − T // num_inference_steps (the scheduler's own rule; needs `set_timesteps`). x_{t-1} is μ + σ_t·z
    with z drawn from `generator` (one per sample in a list: a batch of 4 then equals 4 batches of 1, and a
    generator that drew the initial noise gives the noise diffusers' pipeline draws) or `variance_noise`;
    with `prev_sample` given (re-scoring a stored step) nothing is drawn and the log-probability is that of
    `prev_sample`. The log-probability has the gradient of `model_output` when it has one.
    """
    if eta < 0:
        raise ValueError(f"eta {eta} < 0")
    if prev_sample is not None and eta == 0:
        raise ValueError("a DDIM step at eta=0 is deterministic: it has no log-probability to re-score")
    if prev_sample is not None and (generator is not None or variance_noise is not None):
        raise ValueError("prev_sample is given: nothing to draw (no generator or variance_noise)")
    dtype = torch.promote_types(sample.dtype, torch.float32)
    sample, model_output = sample.to(dtype), model_output.to(dtype)
    batch, device = len(sample), sample.device
    t = per_sample(timestep, batch, device)
    if prev_timestep is None:
        if scheduler.num_inference_steps is None:
            raise ValueError("prev_timestep not given and the scheduler has no set_timesteps(): cannot tell it")
        prev_timestep = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    t_prev = per_sample(prev_timestep, batch, device)
    alphas = scheduler.alphas_cumprod.to(device, dtype)
    a_t = alpha_bar(alphas, t, scheduler.final_alpha_cumprod)
    a_prev = alpha_bar(alphas, t_prev, scheduler.final_alpha_cumprod)

    x0, eps = convert_prediction(model_output, sample, a_t, scheduler.config.prediction_type)
    x0 = clip_prediction(scheduler, x0)
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * variance.sqrt()
    mean = batch_view(a_prev.sqrt(), x0) * x0 + batch_view((1 - a_prev - std**2).sqrt(), eps) * eps

    if prev_sample is None:
        if eta > 0:
            if variance_noise is None:
                if isinstance(generator, list) and len(generator) != batch:
                    raise ValueError(f"{len(generator)} generators for a batch of {batch}")
                variance_noise = randn_tensor(mean.shape, generator=generator, device=device, dtype=dtype)
            prev_sample = mean + batch_view(std, mean) * variance_noise.to(device, dtype)
        else:
            prev_sample = mean
    else:
        prev_sample = prev_sample.to(device, dtype)

    log_prob = None
    if eta > 0:
        if bool((std <= 0).any()):
            raise ValueError(
                f"sigma_t = 0 at timesteps {t[std <= 0].tolist()} -> {t_prev[std <= 0].tolist()}: no log-probability"
            )
        log_prob = gaussian_log_prob(prev_sample, mean, std)
    return DDIMStep(prev_sample, x0, mean, std, log_prob)

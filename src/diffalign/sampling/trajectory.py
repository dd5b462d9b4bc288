"""DDIM(η) trajectories of the training UNet, recorded step by step with their log-probabilities.

`sample_trajectory` is diffusers' text-to-image loop (StableDiffusionPipeline / StableDiffusionXLPipeline
with a DDIMScheduler) run on any UNet-like module, keeping every latent x_T … x_0 and the log-probability
of each step under the DDIM(η) Gaussian policy (`ddim.ddim_step_with_logprob`). With the same seeds, steps,
guidance and η it draws what the pipeline draws (the initial noise of `torch.Generator().manual_seed(seed)`
per image, and the step noise from the same generator afterwards), so at η = 0 its images are the
pipeline's. `step_log_prob` re-scores one stored step under a (possibly different, possibly trained) model,
with gradient: what online preference methods (D3PO, DDPO) train on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor

from ..models.conditioning import TextConditioning, encode_prompts, sdxl_time_ids
from ..models.loading import DiffusionParts
from .ddim import DDIMStep, ddim_scheduler, ddim_step_with_logprob, per_sample
from .guidance import guided_output, module_device_dtype

Uncond = Literal["empty", "zeros"]


@dataclass
class Trajectory:
    """B sampled trajectories of K DDIM steps (x_T → x_0) and what is needed to re-score them.

    - latents: float32 (B, K+1, C, h, w), latents[:, 0] = x_T (the initial noise), latents[:, K] = x_0;
      step k goes from latents[:, k] to latents[:, k+1].
    - timesteps: int64 (K,) (or (B, K) when each sample has its own schedule): the timestep of step k's input;
      prev_timesteps: the same shape, the level step k reaches (negative: the final ᾱ of the scheduler).
    - log_probs: float32 (B, K), the log-probability (mean over C·h·w elements) of each step under the
      sampling policy; None for η = 0 (deterministic steps have no density).
    - images: uint8 numpy (B, H, W, 3) decoded from x_0, or None if not decoded.
    - prompts, seeds: B each; eta, guidance: the sampling settings.
    - cond, uncond: the conditioning the UNet saw (uncond None without guidance); time_ids: SDXL's
      micro-conditioning (B, 6), None for SD1.x/2.x.
    All tensors are on the sampling device.
    """

    latents: torch.Tensor
    timesteps: torch.Tensor
    prev_timesteps: torch.Tensor
    log_probs: torch.Tensor | None
    images: np.ndarray | None
    prompts: list[str]
    seeds: list[int]
    eta: float
    guidance: float
    cond: TextConditioning
    uncond: TextConditioning | None = None
    time_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.latents)

    @property
    def num_steps(self) -> int:
        """K, the number of denoising steps."""
        return self.timesteps.shape[-1]

    def select(self, index: Sequence[int] | torch.Tensor) -> Trajectory:
        """The trajectories of the samples `index` (in that order)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        on = idx.to(self.latents.device)
        rows = idx.tolist()

        def pick(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[on]

        return replace(
            self,
            latents=self.latents[on],
            timesteps=self.timesteps if self.timesteps.ndim == 1 else self.timesteps[on],
            prev_timesteps=self.prev_timesteps if self.prev_timesteps.ndim == 1 else self.prev_timesteps[on],
            log_probs=pick(self.log_probs),
            images=None if self.images is None else self.images[rows],
            prompts=[self.prompts[i] for i in rows],
            seeds=[self.seeds[i] for i in rows],
            cond=self.cond[on],
            uncond=None if self.uncond is None else self.uncond[on],
            time_ids=pick(self.time_ids),
        )


def vae_scale_factor(parts: DiffusionParts) -> int:
    """How many pixels one latent cell spans: 2^(number of VAE blocks − 1) (8 for SD, 4 for the tiny models)."""
    return 2 ** (len(parts.vae_config["block_out_channels"]) - 1)


def default_resolution(parts: DiffusionParts, unet: Any) -> int:
    """The pipeline's default image size: the UNet's sample_size times the VAE scale factor."""
    config = getattr(unet, "config", None) or getattr(parts.unet, "config", None)
    if config is None:
        raise ValueError("no UNet config to read the default resolution from: pass resolution")
    return int(config.sample_size) * vae_scale_factor(parts)


def seed_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image, `torch.Generator().manual_seed(seed)` as diffusers' callers make them."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def sampling_conditioning(
    parts: DiffusionParts,
    prompts: Sequence[str],
    resolution: int,
    device: torch.device,
    uncond: Uncond | None = None,
) -> tuple[TextConditioning, TextConditioning, torch.Tensor | None]:
    """(cond, uncond, time_ids) as diffusers' pipelines build them for prompts without a negative prompt.

    uncond "empty": the encoding of the empty caption (StableDiffusionPipeline); "zeros": zero hidden
    states and pooled embedding (StableDiffusionXLPipeline's `force_zeros_for_empty_prompt`, true for the
    SDXL base model). None: the family's pipeline default. time_ids (SDXL only): original size = target
    size = (resolution, resolution), crop (0, 0).
    """
    uncond = uncond or default_uncond(parts.family)
    cond = encode_prompts(parts, prompts)
    empty = encode_prompts(parts, [""]) if uncond == "empty" else None
    negative = unconditional(cond, uncond, empty)
    cond, negative = _to(cond, device), _to(negative, device)
    time_ids = generation_time_ids(parts.family, len(prompts), resolution, device)
    return cond, negative, time_ids


def default_uncond(family: str) -> Uncond:
    """The unconditional input of the family's pipeline: zeros for SDXL, the empty caption otherwise."""
    return "zeros" if family == "sdxl" else "empty"


def unconditional(cond: TextConditioning, kind: Uncond, empty: TextConditioning | None = None) -> TextConditioning:
    """The unconditional conditioning for each row of `cond`: zeros like it, or `empty` (the empty caption's
    conditioning, one row) repeated."""
    if kind == "zeros":
        return TextConditioning(
            torch.zeros_like(cond.hidden_states), None if cond.pooled is None else torch.zeros_like(cond.pooled)
        )
    if kind == "empty":
        if empty is None:
            raise ValueError("uncond 'empty' needs the empty caption's conditioning")
        return _to(empty, cond.hidden_states.device).repeat(len(cond.hidden_states))
    raise ValueError(f"uncond {kind!r}: expected 'empty' or 'zeros'")


def generation_time_ids(family: str, count: int, resolution: int, device: torch.device | None) -> torch.Tensor | None:
    """SDXL's time ids of generated images (original size = target size = resolution, crop (0, 0)); None
    for the other families."""
    if family != "sdxl":
        return None
    size = torch.tensor([[resolution, resolution]] * count, dtype=torch.float32)
    return sdxl_time_ids(size, torch.zeros_like(size), (resolution, resolution)).to(device)


def _to(cond: TextConditioning, device: torch.device) -> TextConditioning:
    return TextConditioning(cond.hidden_states.to(device), None if cond.pooled is None else cond.pooled.to(device))


@torch.no_grad()
def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Images (B, H, W, 3) float32 in [0, 1] on the CPU, decoded from SD latents (B, C, h, w).

    As the pipelines do: latents are unscaled by the VAE's scaling factor (and latents_mean/std, or the
    shift factor, when the VAE has them), decoded, and mapped from [-1, 1] to [0, 1]. An fp16 VAE whose
    config asks for `force_upcast` decodes in float32 (and is put back to fp16).
    """
    config = vae.config
    if config.get("latents_mean") is not None and config.get("latents_std") is not None:
        mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1).to(latents)
        std = torch.tensor(config.latents_std).view(1, -1, 1, 1).to(latents)
        latents = latents * std / config.scaling_factor + mean
    else:
        latents = latents / config.scaling_factor + (config.get("shift_factor") or 0.0)
    upcast = vae.dtype == torch.float16 and config.get("force_upcast", False)
    if upcast:
        vae.to(torch.float32)
    try:
        images = vae.decode(latents.to(vae.device, vae.dtype), return_dict=False)[0]
    finally:
        if upcast:
            vae.to(torch.float16)
    return (images.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()


def to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Images in [0, 1] (B, H, W, 3) as uint8, rounded (as `sampling.generate.generate` does)."""
    array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return (np.clip(array, 0, 1) * 255).round().astype(np.uint8)


def decode_images(vae: AutoencoderKL, latents: torch.Tensor) -> np.ndarray:
    """uint8 images (B, H, W, 3) decoded from SD latents (B, C, h, w)."""
    return to_uint8(decode_latents(vae, latents))


@torch.no_grad()
def sample_trajectory(
    parts: DiffusionParts,
    unet: torch.nn.Module,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int = 20,
    guidance: float = 5.0,
    eta: float = 1.0,
    resolution: int | None = None,
    initial_latents: torch.Tensor | None = None,
    uncond: Uncond | None = None,
    decode: bool = True,
) -> Trajectory:
    """Sample B = len(prompts) DDIM(η) trajectories of `unet` with classifier-free guidance and record them.

    `unet` is any module with UNet2DConditionModel's call signature (the training UNet, peft-wrapped or
    not); the scheduler is a DDIMScheduler with the parts' scheduler config, `steps` timesteps. Image i
    starts from the noise `torch.Generator().manual_seed(seeds[i])` draws (or from `initial_latents`
    (B, C, h, w), e.g. one x_T shared by several images of a prompt), and its η-noise continues that
    generator, as in `pipe(prompts, generator=[...], eta=eta)`. `uncond`: see `sampling_conditioning`.
    The VAE (when `decode`) and text encoders of `parts` must be loaded.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    device, _ = module_device_dtype(unet)
    resolution = resolution or default_resolution(parts, unet)
    cond, negative, time_ids = sampling_conditioning(parts, prompts, resolution, device, uncond)
    size = resolution // vae_scale_factor(parts)
    shape = (len(prompts), parts.vae_config["latent_channels"], size, size)
    trajectory = sample_from_conditioning(
        unet, ddim_scheduler(parts), cond, negative, seeds, shape, steps=steps, guidance=guidance, eta=eta,
        time_ids=time_ids, initial_latents=initial_latents, prompts=prompts,
    )
    if decode:
        trajectory.images = decode_images(parts.vae, trajectory.latents[:, -1])
    return trajectory


@torch.no_grad()
def sample_from_conditioning(
    model: torch.nn.Module | Callable[..., Any],
    scheduler: DDIMScheduler,
    cond: TextConditioning,
    uncond: TextConditioning | None,
    seeds: Sequence[int],
    shape: Sequence[int],
    *,
    steps: int,
    guidance: float,
    eta: float,
    time_ids: torch.Tensor | None = None,
    initial_latents: torch.Tensor | None = None,
    prompts: Sequence[str] | None = None,
    dtype: torch.dtype | None = None,
) -> Trajectory:
    """`sample_trajectory`'s loop on given conditioning (no text encoder, no VAE): B = len(seeds) trajectories
    of latents of `shape` (B, C, h, w), without images.

    `model` is a UNet-like module or a function returning the UNet output (such as a reference's
    `predict`); `scheduler` a DDIMScheduler of the model's noise schedule (`ddim.ddim_scheduler`), whose
    timesteps are set here; `uncond` the unconditional conditioning (needed when guidance > 1);
    `dtype` the UNet's input dtype (default: the module's, float32 for a function). Seeds, initial noise
    and η-noise are drawn as in `sample_trajectory`.
    """
    device, module_dtype = module_device_dtype(model)
    device = device or cond.hidden_states.device
    dtype = dtype or module_dtype
    scheduler.set_timesteps(steps, device=device)
    generators = seed_generators(seeds)
    shape = tuple(shape)
    if initial_latents is None:
        x = randn_tensor(shape, generator=generators, device=device, dtype=torch.float32)
    else:
        if tuple(initial_latents.shape) != shape:
            raise ValueError(f"initial_latents of shape {tuple(initial_latents.shape)}, expected {shape}")
        x = initial_latents.to(device, torch.float32)
    x = x * scheduler.init_noise_sigma

    latents, log_probs = [x], []
    timesteps = scheduler.timesteps
    prev_timesteps = timesteps - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    for t, t_prev in zip(timesteps, prev_timesteps):
        out = guided_output(model, scheduler.scale_model_input(x, t), t, cond, uncond, guidance, time_ids, dtype)
        step = ddim_step_with_logprob(scheduler, out, t, x, eta=eta, prev_timestep=t_prev, generator=generators)
        x = step.prev_sample
        latents.append(x)
        log_probs.append(step.log_prob)
    return Trajectory(
        latents=torch.stack(latents, dim=1),
        timesteps=timesteps,
        prev_timesteps=prev_timesteps,
        log_probs=None if eta == 0 else torch.stack(log_probs, dim=1),
        images=None,
        prompts=list(prompts) if prompts is not None else [""] * len(seeds),
        seeds=[int(s) for s in seeds],
        eta=eta,
        guidance=guidance,
        cond=cond,
        uncond=uncond if guidance > 1 else None,
        time_ids=time_ids,
    )


def step_log_prob(
    model: torch.nn.Module | Callable[..., Any],
    scheduler: DDIMScheduler,
    trajectory: Trajectory,
    step: int | torch.Tensor,
    *,
    eta: float | None = None,
    guidance: float | None = None,
) -> torch.Tensor:
    """log π(latents[k+1] | latents[k]) (B,) of the stored step k (int, or (B,) one step per sample) under
    `model`, with the trajectory's conditioning (and by default its η and guidance): `rescore_step`'s log-prob.

    `model` is a UNet-like module (the policy: the result carries its gradient when grad is enabled) or a
    function returning the UNet output tensor (a reference's `predict`). `scheduler`: a DDIMScheduler with
    the model's noise schedule and prediction type (`ddim.ddim_scheduler(parts)`); its timestep state is
    not used (the trajectory stores both levels of every step).
    """
    result = rescore_step(model, scheduler, trajectory, step, eta=eta, guidance=guidance)
    assert result.log_prob is not None  # eta > 0: checked by ddim_step_with_logprob
    return result.log_prob


def rescore_step(
    model: torch.nn.Module | Callable[..., Any],
    scheduler: DDIMScheduler,
    trajectory: Trajectory,
    step: int | torch.Tensor,
    *,
    eta: float | None = None,
    guidance: float | None = None,
) -> DDIMStep:
    """The DDIM(η) step of `model` from the stored latents[k] towards the stored latents[k+1] (see
    `step_log_prob`): its mean μ, std σ_t and the log-probability of the stored latents[k+1]; the mean lets
    a caller measure the step's KL to another model's (`objectives.ddpo.gaussian_step_kl`)."""
    eta = trajectory.eta if eta is None else eta
    guidance = trajectory.guidance if guidance is None else guidance
    batch, device = len(trajectory), trajectory.latents.device
    k = per_sample(step, batch, device)
    if bool(((k < 0) | (k >= trajectory.num_steps)).any()):
        raise ValueError(f"steps {k.tolist()} outside 0..{trajectory.num_steps - 1}")
    rows = torch.arange(batch, device=device)
    sample, prev_sample = trajectory.latents[rows, k], trajectory.latents[rows, k + 1]

    def level(timesteps: torch.Tensor) -> torch.Tensor:
        timesteps = timesteps.to(device)
        return timesteps[k] if timesteps.ndim == 1 else timesteps[rows, k]

    t, t_prev = level(trajectory.timesteps), level(trajectory.prev_timesteps)
    _, dtype = module_device_dtype(model)
    out = guided_output(
        model, sample, t, trajectory.cond, trajectory.uncond, guidance, trajectory.time_ids, dtype or sample.dtype
    )
    return ddim_step_with_logprob(scheduler, out, t, sample, eta=eta, prev_timestep=t_prev, prev_sample=prev_sample)

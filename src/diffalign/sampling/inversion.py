"""DDIM inversion (x0 → x_t, InPO) and ReNoise inversion (SmPO) on an explicit grid, one target t per sample.

The grid of N inverse steps is that of diffusers' `DDIMInverseScheduler.set_timesteps(N)` (its config
and ᾱ come from the model's scheduler config), written out step by step in an `InversionGrid`:

    step j:  level sources[j] → level targets[j],  UNet evaluated at unet_timesteps[j]
    targets = DDIMInverseScheduler.timesteps       ([1, 101, …, 901] for N = 10, 'leading', offset 1)
    sources = targets − T // N                     ([−99, 1, …, 801]; a negative level is the clean latent,
                                                    ᾱ = the scheduler's initial_alpha_cumprod)
    unet_timesteps = targets                       ("consistent", as diffusers 0.42's inversion pipelines call
                                                    the UNet: never at a negative timestep)
                   = sources                       ("official": diffusers 0.20's DDIMInverseScheduler, which
                                                    InPO and SmPO ran: the UNet at the current level, −99 first)

An inverse step with the noise prediction ε̂ is the deterministic DDIM relation run upwards:
x̂0 = (x − √(1−ᾱ_src)·ε̂)/√ᾱ_src (clipped if the config says clip_sample), x ← √ᾱ_tgt·x̂0 + √(1−ᾱ_tgt)·ε̂.
For v_prediction and sample models the output is converted to ε̂ at the level the UNet was told
(unet_timesteps[j]), the level whose noise ε̂ stands for.

Sample b runs the steps whose source level is below its timestep t_b (the InPO/SmPO rule "grid values
< t_s"), so it reaches the level targets[last run step]: for N = 10, t_b ∈ {0, 1} → 1, 2..101 → 101, …,
802..999 → 901 (`reached_timesteps`). The two modes differ only in `unet_timesteps`; the official one
reproduces the papers' latents (and the hand-computed vectors of `tests/reference_vectors.json`) whichever diffusers is installed.

ReNoise (`renoise_steps` = k ≥ 1): after the first estimate of the next latent, the UNet's prediction at
that estimate (same timestep) is evaluated k more times, each re-estimating the next latent from the last
prediction, and the step is finally taken with the mean of all k + 1 predictions. k = 1 is SmPO's
one-iteration ReNoise: ε1 = ε(x), x' = step(ε1), ε2 = ε(x'), x ← step((ε1 + ε2)/2).

Optional η-noise (InPO's `inversion_eta`, 0.1): after each step, x += η·√var·n with var the DDIM variance
of the reverse step (1−ᾱ_src)/(1−ᾱ_tgt)·(1−ᾱ_tgt/ᾱ_src) and n drawn from the sample's own generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDIMInverseScheduler
from diffusers.configuration_utils import FrozenDict
from diffusers.utils.torch_utils import randn_tensor

from ..models.conditioning import TextConditioning
from .ddim import alpha_bar, batch_view, convert_prediction, per_sample
from .guidance import guided_output, module_device_dtype


@dataclass(frozen=True)
class InversionGrid:
    """N inverse DDIM steps (int64 (N,) each): step j moves from level sources[j] to targets[j] with the UNet
    evaluated at unet_timesteps[j]; a negative source is the clean latent (ᾱ = initial_alpha_cumprod)."""

    sources: torch.Tensor
    targets: torch.Tensor
    unet_timesteps: torch.Tensor
    mode: str = "consistent"

    def __len__(self) -> int:
        return len(self.targets)


@dataclass
class Inversion:
    """Inverted latents (B, C, h, w) float32 and the level each reached (int64 (B,), a grid target)."""

    latents: torch.Tensor
    timesteps: torch.Tensor


def inverse_scheduler(config: FrozenDict | dict) -> DDIMInverseScheduler:
    """A DDIMInverseScheduler with this (DDPM/DDIM) scheduler config: the model's ᾱ, initial ᾱ, spacing,
    offset, prediction type and clip_sample. Refuses dynamic thresholding, which has no inverse."""
    if config.get("thresholding", False):
        raise ValueError("the scheduler config asks for dynamic thresholding, which DDIM inversion cannot undo")
    return DDIMInverseScheduler.from_config(config)


def inversion_grid(scheduler: DDIMInverseScheduler, num_steps: int, mode: str = "consistent") -> InversionGrid:
    """The explicit grid of `num_steps` inverse steps of this scheduler, the UNet at each step's target level
    ("consistent") or at its source level, as diffusers 0.20 and the InPO/SmPO code ("official"); see the
    module docstring."""
    if mode not in ("consistent", "official"):
        raise ValueError(f"inversion mode {mode!r}: expected 'consistent' or 'official'")
    scheduler.set_timesteps(num_steps)
    targets = scheduler.timesteps.long().cpu()
    sources = targets - scheduler.config.num_train_timesteps // num_steps
    unet = targets.clone() if mode == "consistent" else sources.clone()
    return InversionGrid(sources=sources, targets=targets, unet_timesteps=unet, mode=mode)


def steps_to_run(grid: InversionGrid, timesteps: torch.Tensor) -> torch.Tensor:
    """(B, N) bool: whether sample b runs step j, i.e. the step's source level is below t_b."""
    return grid.sources[None, :] < timesteps.cpu().long()[:, None]


def reached_timesteps(grid: InversionGrid, timesteps: int | torch.Tensor) -> torch.Tensor:
    """The level (B,) the inversion reaches for target timesteps t (B,): the target of the last step run
    (−1, the clean latent, where no step runs)."""
    t = per_sample(timesteps, torch.as_tensor(timesteps).numel(), torch.device("cpu"))
    run = steps_to_run(grid, t)
    last = torch.where(run, torch.arange(len(grid)), -1).max(dim=1).values
    return torch.where(last >= 0, grid.targets[last.clamp(min=0)], -1)


def _inverse_step(
    scheduler: DDIMInverseScheduler, eps: torch.Tensor, x: torch.Tensor, a_src: torch.Tensor, a_tgt: torch.Tensor
) -> torch.Tensor:
    x0 = (x - batch_view((1 - a_src).sqrt(), x) * eps) / batch_view(a_src.sqrt(), x)
    if scheduler.config.clip_sample:
        x0 = x0.clamp(-scheduler.config.clip_sample_range, scheduler.config.clip_sample_range)
    return batch_view(a_tgt.sqrt(), x) * x0 + batch_view((1 - a_tgt).sqrt(), x) * eps


@torch.no_grad()
def invert(
    unet: torch.nn.Module | Callable[..., Any],
    scheduler_config: FrozenDict | dict,
    latents: torch.Tensor,
    timesteps: int | torch.Tensor,
    cond: TextConditioning,
    *,
    num_steps: int = 10,
    time_ids: torch.Tensor | None = None,
    guidance: float = 1.0,
    uncond: TextConditioning | None = None,
    renoise_steps: int = 0,
    eta: float = 0.0,
    generator: Sequence[torch.Generator] | None = None,
    grid: InversionGrid | None = None,
) -> Inversion:
    """Invert clean latents x0 (B, C, h, w) towards the timesteps t_b (int or (B,)) by DDIM inversion on a grid
    of `num_steps` inverse steps (ReNoise with `renoise_steps` > 0; η-noise from one generator per sample
    with `eta` > 0), under `unet` conditioned on `cond` (and `time_ids` for SDXL).

    `scheduler_config`: the model's scheduler config (`parts.noise_scheduler.config`). Guidance 1 (the
    conditional prediction only) by default; g > 1 needs `uncond`. The UNet is called only on the samples
    that run a step, never at a negative timestep, without gradient. Sample b's result does not depend on the
    other samples of the batch (on a consistent grid). Returns the latents and the levels reached (`reached_timesteps`).
    `grid` (default: the consistent grid of `num_steps`) may be the official one, whose first step calls the
    UNet at a negative timestep, as the papers' code did.
    """
    if renoise_steps < 0 or eta < 0:
        raise ValueError(f"renoise_steps {renoise_steps} and eta {eta} must be >= 0")
    scheduler = inverse_scheduler(scheduler_config)
    grid = grid or inversion_grid(scheduler, num_steps)
    if grid.mode != "official" and int(grid.unet_timesteps.min()) < 0:
        raise ValueError(f"the grid calls the UNet at a negative timestep: {grid.unet_timesteps.tolist()}")
    batch, device = len(latents), latents.device
    if eta > 0 and (generator is None or len(generator) != batch):
        raise ValueError("eta > 0 needs one generator per sample")
    _, dtype = module_device_dtype(unet)
    t_target = per_sample(timesteps, batch, device)
    run = steps_to_run(grid, t_target)
    alphas = scheduler.alphas_cumprod.to(device, torch.float32)
    initial = scheduler.initial_alpha_cumprod
    prediction_type = scheduler.config.prediction_type
    x = latents.to(torch.float32).clone()
    for j in range(len(grid)):
        rows = run[:, j].nonzero().flatten().tolist()
        if not rows:
            continue
        idx = torch.tensor(rows, device=device)
        n = len(rows)
        a_src = alpha_bar(alphas, grid.sources[j].to(device).expand(n), initial)
        a_tgt = alpha_bar(alphas, grid.targets[j].to(device).expand(n), initial)
        t_unet = grid.unet_timesteps[j].to(device)
        a_unet = alpha_bar(alphas, t_unet.expand(n), initial)
        c, u = cond[idx], None if uncond is None else uncond[idx]
        ids = None if time_ids is None else time_ids[idx]

        def predict_eps(at: torch.Tensor) -> torch.Tensor:
            out = guided_output(unet, at, t_unet, c, u, guidance, ids, dtype or at.dtype)
            return convert_prediction(out, at, a_unet, prediction_type)[1]

        x_rows = x[idx]
        predictions = [predict_eps(x_rows)]
        estimate = _inverse_step(scheduler, predictions[0], x_rows, a_src, a_tgt)
        for _ in range(renoise_steps):
            predictions.append(predict_eps(estimate))
            estimate = _inverse_step(scheduler, predictions[-1], x_rows, a_src, a_tgt)
        if renoise_steps:
            estimate = _inverse_step(scheduler, torch.stack(predictions).mean(dim=0), x_rows, a_src, a_tgt)
        if eta > 0:
            std = eta * ((1 - a_src) / (1 - a_tgt) * (1 - a_tgt / a_src)).sqrt()
            gens = [generator[b] for b in rows]  # type: ignore[index]
            noise = randn_tensor(estimate.shape, generator=gens, device=device, dtype=torch.float32)
            estimate = estimate + batch_view(std, estimate) * noise
        x[idx] = estimate
    return Inversion(latents=x, timesteps=reached_timesteps(grid, t_target.cpu()).to(device))

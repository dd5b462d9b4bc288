"""DGPO (Luo, Hu & Tang, ICLR 2026, "Reinforcing Diffusion Models by Direct Group Preference Optimization"):
Diffusion-DPO between the positive and the negative subgroup of each prompt's online group.

Each prompt c draws a group of G images with a deterministic sampler; their rewards give group-relative
advantages A_i (GRPO's, `training.advantages`): A_i > 0 puts image i in the positive subgroup G⁺, A_i < 0 in the
negative G⁻, and |A_i| is its weight there. With the denoising errors e_i = ‖net(x_t, t, c) − target‖² (mean over
elements) of the policy θ and the reference at one noise and timestep, the implicit reward of an image is
r_θ(x_i) = −β (e_θ,i − e_ref,i), and the group preference G⁺ ≻ G⁻ is learnt by maximum likelihood:

    R_θ(G⁺) − R_θ(G⁻) = Σ_{i∈G} A_i r_θ(x_i) / G = −s_g,      s_g = β Σ_{i∈g} A_i (e_θ,i − e_ref,i) / G
    ℓ_g = −log σ(R_θ(G⁺) − R_θ(G⁻)) = −log σ(−s_g)                                          (paper's loss)

Its gradient is ∇ℓ_g = σ(s_g) · β/G · Σ_{i∈g} A_i ∇e_θ,i. The official code (Luo-Yihong/DGPO,
`scripts/train_sd3_dgpo.py: compute_group_dgpo_loss_allreduce`) back-propagates the surrogate

    loss = mean_i  sg[σ(s_{g(i)})] · A_i · e_θ,i                       (sg: no gradient)

whose gradient is (1/β) · ∇ mean_g ℓ_g when every group has G images: β sets how sharply the weight σ(s_g)
saturates, not the step size. This function returns that surrogate as the loss (so learning rates carry over
from the official recipes) and ℓ_g's mean as the metric `group_loss`.

Two optional terms of the official code:

- PPO-style clip (`clip_range` c > 0, with the errors `old_err` of the previous policy at the same inputs):
  ρ_i = exp(e_old,i − e_θ,i); an image whose ρ_i already passed 1 + c in the direction its advantage favours
  (A_i > 0 and ρ_i > 1 + c, or A_i < 0 and ρ_i < 1 − c) keeps its value but loses its gradient (`clip_dsm`).
- KL to the frozen base: w · mean_i ‖net_θ − net_base‖² (`kl`: the per-image mean squared difference of the
  two outputs, `kl_weight` w; the official `beta` 1e-3).

Advantages are clamped to [−a, a] first (`advantage_clip`); a NaN advantage (an unscored image) counts 0, so the
image is in neither subgroup.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .types import ObjectiveOutput


def group_sums(values: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Σ of `values` (B,) within each group: shape (number of groups,), groups numbered 0..n-1 in `groups` (B,)."""
    count = int(groups.max()) + 1 if groups.numel() else 0
    return torch.zeros(count, dtype=values.dtype, device=values.device).index_add_(0, groups, values)


def dgpo_loss(
    model_err: torch.Tensor,
    ref_err: torch.Tensor,
    advantages: torch.Tensor,
    groups: torch.Tensor,
    *,
    beta: float,
    advantage_clip: float,
    old_err: torch.Tensor | None = None,
    clip_range: float = 0.0,
    kl: torch.Tensor | None = None,
    kl_weight: float = 0.0,
) -> ObjectiveOutput:
    """DGPO's loss for B images in complete groups (see the module docstring); every input (B,).

    `groups` numbers each image's group 0..n-1 (the images of a prompt's group share a number); `old_err` is
    needed when `clip_range` > 0, `kl` when `kl_weight` > 0. Metrics: `group_loss` (the paper's −log σ(−s_g),
    mean over groups), `group_margin` (−s_g, mean), `weight` (σ(s_g), mean), `positive` (fraction with A > 0),
    `advantage_abs`, `model_err`/`ref_err` (means), `clip_fraction` (with the clip), `kl` (with the KL).
    """
    adv = torch.nan_to_num(advantages.float(), nan=0.0).clamp(-advantage_clip, advantage_clip)
    model_err = model_err.float()
    ref_err = ref_err.float().detach()
    sizes = group_sums(torch.ones_like(adv), groups)
    s = beta * group_sums(adv * (model_err.detach() - ref_err), groups) / sizes
    weight = torch.sigmoid(s)
    trained_err = model_err
    metrics: dict[str, torch.Tensor] = {}
    if clip_range > 0:
        if old_err is None:
            raise ValueError("dgpo_loss: clip_range > 0 needs old_err, the previous policy's errors")
        ratio = torch.exp(old_err.float().detach() - model_err.detach())
        clipped = torch.where(adv > 0, ratio > 1 + clip_range, ratio < 1 - clip_range)
        trained_err = torch.where(clipped, model_err.detach(), model_err)
        metrics["clip_fraction"] = clipped.float().mean()
    loss = (weight[groups].detach() * adv * trained_err).mean()
    if kl_weight > 0:
        if kl is None:
            raise ValueError("dgpo_loss: kl_weight > 0 needs kl, the per-image distance to the base model's output")
        loss = loss + kl_weight * kl.float().mean()
        metrics["kl"] = kl.detach().float().mean()
    metrics.update(
        group_loss=(-F.logsigmoid(-s)).mean().detach(),
        group_margin=(-s).mean().detach(),
        weight=weight.mean().detach(),
        positive=(adv > 0).float().mean(),
        advantage_abs=adv.abs().mean(),
        model_err=model_err.detach().mean(),
        ref_err=ref_err.mean(),
    )
    return ObjectiveOutput(loss, metrics)

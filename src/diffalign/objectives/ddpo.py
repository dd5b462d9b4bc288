"""DDPO (Black et al., ICLR 2024): policy-gradient fine-tuning of the denoising MDP on a reward, PPO-clipped.

Denoising is an MDP whose policy is the DDIM(η > 0) transition π_θ(x_{t-1} | x_t, c). Trajectories are sampled
with the policy of the round (θ_old, whose step log-probabilities are stored), their final images scored, and the
scores turned into per-trajectory advantages A (`training.advantages`). Each step t of trajectory i then gets the
PPO clipped surrogate (the paper's DDPO_IS with a trust region, Sec. 4.3), negated to be minimised:

    A_i   = clamp(A_i, −a, a)                                       (advantage clipping, a = `advantage_clip`)
    ρ_i   = π_θ(x_{t-1} | x_t, c) / π_θ_old(x_{t-1} | x_t, c)  = exp(log π_θ − log π_θ_old)
    loss  = mean_i max(−A_i·ρ_i, −A_i·clamp(ρ_i, 1 − ε, 1 + ε))  + w · mean_i KL_i

The optional last term is DPOK's KL regulariser (Fan et al., NeurIPS 2023): KL_i of the step's policy to the
frozen base model's (`gaussian_step_kl`), weighted by w = `kl_weight`. A sample pushed past the trust region in
the direction its advantage favours takes the constant branch, so its gradient is exactly zero.

The log-probabilities are means over the latent's elements (`sampling.ddim`), as in the official code, so ρ is
the ratio of per-element densities and ε = 1e-4 (the official default) is calibrated to that. Where this
differs from ddpo-pytorch's PPO step (`scripts/train.py`): a NaN advantage (an image the reward model could not
score, which the official code would let poison the whole batch's loss and gradients) counts as advantage 0,
so that sample contributes nothing; the KL term is ours (DPOK's), absent from ddpo-pytorch; and the metrics are
returned rather than logged, under the names below (`clipfrac` is `clip_fraction`).
"""

from __future__ import annotations

import torch

from .types import ObjectiveOutput


def ddpo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_range: float,
    advantage_clip: float,
    kl: torch.Tensor | None = None,
    kl_weight: float = 0.0,
) -> ObjectiveOutput:
    """DDPO's PPO-clipped loss of one denoising step for a batch of trajectories, every input of shape (B,).

    `log_prob`: the step's log-probability under the trained policy (with grad); `old_log_prob`: under the
    policy that sampled it; `advantages`: each trajectory's advantage (NaN counts as 0). Both of the latter are
    detached. `kl` (B,): the step's KL to the base model, added times `kl_weight` (None: no KL term, and then
    `kl_weight` must be 0). Metrics: `policy_loss` (the clipped surrogate alone), `ratio` (mean ρ),
    `clip_fraction` (share of samples with |ρ − 1| > ε), `approx_kl` (½·mean (log π_θ − log π_θ_old)², the
    official code's estimator), `advantage` (mean |A| after clipping) and `kl` (mean KL) when given.
    """
    _check_shapes(log_prob=log_prob, old_log_prob=old_log_prob, advantages=advantages, kl=kl)
    for name, value in (("clip_range", clip_range), ("advantage_clip", advantage_clip)):
        if not value > 0:
            raise ValueError(f"ddpo_loss: {name} must be positive, not {value}")
    if kl is None and kl_weight != 0:
        raise ValueError(
            f"ddpo_loss: kl_weight is {kl_weight} but no kl was given; pass each sample's KL to the base model "
            "(objectives.ddpo.gaussian_step_kl) or set kl_weight to 0"
        )
    old_log_prob = old_log_prob.detach()
    advantages = advantages.detach()
    advantages = torch.where(torch.isnan(advantages), torch.zeros_like(advantages), advantages)
    advantages = advantages.clamp(-advantage_clip, advantage_clip)
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    policy_loss = torch.maximum(unclipped, clipped).mean()
    loss = policy_loss if kl is None else policy_loss + kl_weight * kl.mean()
    with torch.no_grad():
        metrics = {
            "policy_loss": policy_loss,
            "ratio": ratio.mean(),
            "clip_fraction": ((ratio - 1).abs() > clip_range).to(ratio.dtype).mean(),
            "approx_kl": 0.5 * log_ratio.pow(2).mean(),
            "advantage": advantages.abs().mean(),
        }
        if kl is not None:
            metrics["kl"] = kl.mean()
    return ObjectiveOutput(loss=loss, metrics={k: v.detach() for k, v in metrics.items()})


def gaussian_step_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(μ_θ, σ²I) ‖ N(μ_ref, σ²I)) of one DDIM step per sample, averaged over the latent's elements: (B,).

    Both policies share the scheduler's σ_t (`std`, (B,)), so the KL of each element is (μ_θ − μ_ref)²/(2σ²);
    its mean over (C, h, w) is on the scale of `sampling.ddim`'s mean log-probabilities. `mean` (B, C, h, w) is
    the trained model's step mean (with grad), `ref_mean` the base model's (detached). DPOK sums the KL over
    the elements instead; the mean keeps the KL weight independent of the resolution, as β is for D3PO.
    """
    if mean.shape != ref_mean.shape:
        raise ValueError(f"gaussian_step_kl: mean has shape {tuple(mean.shape)}, ref_mean {tuple(ref_mean.shape)}")
    if std.shape != mean.shape[:1]:
        raise ValueError(f"gaussian_step_kl: std must have shape ({mean.shape[0]},), one per sample, "
                         f"not {tuple(std.shape)}")
    zero = (std <= 0).nonzero()
    if len(zero):
        raise ValueError(
            f"gaussian_step_kl: the step's std is {std[zero[0, 0]].item()} for sample {zero[0, 0].item()}: a "
            "DDIM step at eta 0 is deterministic and has no KL; sample with eta > 0"
        )
    squared = (mean - ref_mean.detach()).pow(2).flatten(1).mean(dim=1)
    return squared / (2 * std.detach().pow(2))


def _check_shapes(**tensors: torch.Tensor | None) -> None:
    """Every given tensor is one value per sample, (B,), with the same B."""
    given = {name: t for name, t in tensors.items() if t is not None}
    for name, t in given.items():
        if t.ndim != 1:
            raise ValueError(f"ddpo_loss: {name} must hold one value per sample, shape (B,), not {tuple(t.shape)}")
    shapes = {name: tuple(t.shape) for name, t in given.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"ddpo_loss: the inputs disagree on the batch size: {shapes}")

"""SmPO-Diffusion (Lu et al., ICML 2025): a smoothed preference label from a reward model, on inverted latents.

A scorer rates both images of a pair; the higher score is the winner (the scorer re-decides the pair), and
the scores, min-max normalised with bounds (lo, hi), give the probability that the winner is preferred:

    s' = (s − lo) / (hi − lo),     p = σ(s'_w − s'_l) ∈ [0.5, 1)

The Diffusion-DPO logit on ReNoise-inverted latents (`objectives.inpo`'s target τ_t) is weighted by γ(2p − 1):

    inside = −0.5 · β · γ(2p − 1) · [(e_θ(w) − e_θ(l)) − (e_ref(w) − e_ref(l))],   loss = mean −log σ(inside)

so equal scores give weight 0 (loss ln 2, no gradient), and a normalised gap of 1 (the whole range
between the bounds) gives γ·tanh(1/2) ≈ 0.46·γ. The official code uses γ = 10 and PickScore's raw cosine similarity with the
bounds lo = 0.11543526500463486, hi = 0.28201571106910706 of Pick-a-Pic; on PickScore's default
`logit_scale · cos` scale those constants saturate every weight at γ, so by default the bounds are the
training data's own minimum and maximum score. Unlike the official code, which weights every pair of a
batch by its first pair's label, each pair gets its own weight.
"""

from __future__ import annotations

import torch

from .dpo import dpo_loss
from .types import ObjectiveOutput

PAPER_BOUNDS = (0.11543526500463486, 0.28201571106910706)  # raw PickScore cosine on Pick-a-Pic v2


def smoothed_label(score_w: torch.Tensor, score_l: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """p = σ(s'_w − s'_l) with s' = (s − low)/(high − low), per pair, float64-exact inputs welcome."""
    if not high > low:
        raise ValueError(f"score bounds must satisfy high > low, got low={low}, high={high}")
    return torch.sigmoid((score_w - score_l) / (high - low))


def smoothed_weight(score_w: torch.Tensor, score_l: torch.Tensor, low: float, high: float,
                    gamma: float = 10.0) -> torch.Tensor:
    """γ(2p − 1) per pair, 0 for equal scores."""
    return gamma * (2 * smoothed_label(score_w, score_l, low, high) - 1)


def smpo_loss(
    model_err_w: torch.Tensor,
    model_err_l: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_l: torch.Tensor,
    beta: float,
    weight: torch.Tensor,
) -> ObjectiveOutput:
    """SmPO loss from per-sample errors (each (B,)) against the inversion target, each pair's logit
    weighted by its `weight` = γ(2p − 1) (`smoothed_weight`); Diffusion-DPO's metrics plus `weight`."""
    out = dpo_loss(model_err_w, model_err_l, ref_err_w, ref_err_l, beta, weight)
    out.metrics["weight"] = weight.detach().float().mean()
    return out

"""D3PO (Yang et al., CVPR 2024): DPO on the steps of sampled denoising trajectories, without a reward model.

Denoising is an MDP whose policy is the DDIM(η = 1) transition π_θ(x_{t-1} | x_t, c). For two trajectories of
one prompt, w preferred to l on their final images, every step k is taken as preferred (the paper's Eq. 7):

    L_k = −log σ( β·log[π_θ(a_k^w|s_k^w) / π_ref(a_k^w|s_k^w)] − β·log[π_θ(a_k^l|s_k^l) / π_ref(a_k^l|s_k^l)] )

In the official code's form, which this function computes: the log-probabilities are means over the latent's
elements (β = 0.1 is calibrated to that), each ratio is clamped to [1 − ε, 1 + ε] before its logarithm (so a
sample whose ratio left the interval contributes exactly zero gradient), and a pair is scored by
h_w = +1, h_l = −1, or h = 0 for both members of a tie (its loss is the constant ln 2, with zero gradient):

    r_i  = clamp(exp(logπ_θ,i − logπ_ref,i), 1 − ε, 1 + ε)
    loss = mean over pairs of −log σ(β·h_w·log r_w + β·h_l·log r_l)

The loss of one step; the method averages it over the steps of a trajectory through gradient accumulation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .types import ObjectiveOutput


def d3po_loss(
    log_prob_w: torch.Tensor,
    ref_log_prob_w: torch.Tensor,
    log_prob_l: torch.Tensor,
    ref_log_prob_l: torch.Tensor,
    beta: float = 0.1,
    clip: float = 0.1,
    tie: torch.Tensor | None = None,
) -> ObjectiveOutput:
    """D3PO's per-step loss of a batch of trajectory pairs from step log-probabilities, each of shape (B,).

    `tie` (bool, (B,)) marks pairs whose two images were judged equal: h = 0, loss ln 2, no gradient.
    Metrics: `implicit_acc` (share of pairs with a positive logit, ties and zeros counting one half),
    `reward_margin` (mean logit), `log_ratio_w/l` (mean unclamped log-ratios) and `clipped` (share of
    samples whose ratio was clamped, which therefore gave no gradient).
    """
    ref_log_prob_w, ref_log_prob_l = ref_log_prob_w.detach(), ref_log_prob_l.detach()
    log_ratio_w, log_ratio_l = log_prob_w - ref_log_prob_w, log_prob_l - ref_log_prob_l
    ratio_w = torch.clamp(torch.exp(log_ratio_w), 1 - clip, 1 + clip)
    ratio_l = torch.clamp(torch.exp(log_ratio_l), 1 - clip, 1 + clip)
    sign = torch.ones_like(ratio_w) if tie is None else (~tie.to(ratio_w.device)).to(ratio_w.dtype)
    logits = beta * sign * torch.log(ratio_w) - beta * sign * torch.log(ratio_l)
    loss = -F.logsigmoid(logits).mean()
    with torch.no_grad():
        clipped = torch.cat([(log_ratio_w.exp() - ratio_w).abs() > 0, (log_ratio_l.exp() - ratio_l).abs() > 0])
        metrics = {
            "implicit_acc": ((logits > 0).float() + 0.5 * (logits == 0).float()).mean(),
            "reward_margin": logits.mean(),
            "log_ratio_w": log_ratio_w.mean(),
            "log_ratio_l": log_ratio_l.mean(),
            "clipped": clipped.float().mean(),
        }
    return ObjectiveOutput(loss=loss, metrics={k: v.detach() for k, v in metrics.items()})

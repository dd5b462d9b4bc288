"""Diffusion-DPO (Wallace et al., CVPR 2024): the pairwise loss on denoising errors.

With per-sample errors e = mean_{C,H,W} (net(x_t, t, c) - target)^2 for the winner (w) and loser (l),
under the trained model (θ) and the frozen reference (ref), with one noise and one timestep per pair:

    inside = -0.5 * beta * [(e_θ(w) - e_θ(l)) - (e_ref(w) - e_ref(l))]
    loss   = mean over pairs of -log sigmoid(inside)

This is the official implementation's form of the paper's Eq. 14: its `beta_dpo` absorbs T, ω(λ_t) and
the 1/(C·H·W) of the mean. The same beta therefore means the same per-element strength for SD1.5,
SD2.1 and SDXL at any resolution. `inside > 0` means the model improved the winner relative to the
loser more than the reference did. At initialisation (model == reference) the loss is ln 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .types import ObjectiveOutput


def dpo_logits(
    model_err_w: torch.Tensor,
    model_err_l: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_l: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """The per-pair logit `-0.5 * beta * [(e_θ(w) - e_θ(l)) - (e_ref(w) - e_ref(l))]`, shape (B,)."""
    return -0.5 * beta * ((model_err_w - model_err_l) - (ref_err_w - ref_err_l))


def dpo_loss(
    model_err_w: torch.Tensor,
    model_err_l: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_l: torch.Tensor,
    beta: float,
    weight: torch.Tensor | None = None,
) -> ObjectiveOutput:
    """Diffusion-DPO loss of a batch of pairs, from per-sample denoising errors (each of shape (B,)).

    `weight` (shape (B,)) multiplies each pair's logit before the sigmoid; SmPO passes its smoothed
    label weight γ(2p - 1) here. Metrics:
    `implicit_acc` (share of pairs with logit > 0; ties count one half, so it is 0.5 at the start),
    `reward_margin` (mean logit: the implicit reward of the winner minus the loser's),
    `model_err_w/l`, `ref_err_w/l` (mean errors) and `model_ref_gap` (mean e_θ - e_ref over all images).
    """
    ref_err_w, ref_err_l = ref_err_w.detach(), ref_err_l.detach()
    logits = dpo_logits(model_err_w, model_err_l, ref_err_w, ref_err_l, beta)
    if weight is not None:
        logits = logits * weight
    loss = -F.logsigmoid(logits).mean()
    with torch.no_grad():
        acc = (logits > 0).float() + 0.5 * (logits == 0).float()
        metrics = {
            "implicit_acc": acc.mean(),
            "reward_margin": logits.mean(),
            "model_err_w": model_err_w.mean(),
            "model_err_l": model_err_l.mean(),
            "ref_err_w": ref_err_w.mean(),
            "ref_err_l": ref_err_l.mean(),
            "model_ref_gap": ((model_err_w - ref_err_w) + (model_err_l - ref_err_l)).mean() / 2,
        }
    return ObjectiveOutput(loss=loss, metrics={k: v.detach() for k, v in metrics.items()})

"""Diffusion-DPO (Wallace et al., CVPR 2024): the pairwise loss on denoising errors.

With per-sample errors e = mean_{C,H,W} (net(x_t, t, c) - target)^2 for the winner (w) and loser (l),
under the trained model (θ) and the frozen reference (ref), with one noise and one timestep per pair:

    inside = -0.5 * beta * [(e_θ(w) - e_θ(l)) - (e_ref(w) - e_ref(l))]
    loss   = mean over pairs of -log sigmoid(inside)

This is the official implementation's form of the paper's Eq. 14: its `beta_dpo` absorbs T, ω(λ_t) and
the 1/(C·H·W) of the mean. The same beta therefore means the same per-element strength for SD1.5,
SD2.1 and SDXL at any resolution. `inside > 0` means the model improved the winner relative to the
loser more than the reference did. At initialisation (model == reference) the loss is ln 2.

The same logit z = inside feeds the two other forms of the pairwise loss users compare it with
(`PAIR_LOSSES`, chosen by `form`):

    ipo:    (z − 1/2)²        IPO (Azar et al. 2024), (h − 1/(2τ))² with h = z/τ, times τ², τ in β's units.
                              The diffusers research script's `ipo`, (ref_diff − model_diff − 1/(2β'))² with
                              β' = β/2, is this times 4/β²: the same minimiser, gradients 4/β² as large.
    hinge:  max(0, 1 − z)     SLiC's hinge; equal to the diffusers script's `hinge`, relu(1 − β'·logits).

At initialisation IPO's loss is 1/4 and the hinge's 1.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from .types import ObjectiveOutput

PairLossForm = Literal["sigmoid", "ipo", "hinge"]


def dpo_logits(
    model_err_w: torch.Tensor,
    model_err_l: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_l: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """The per-pair logit `-0.5 * beta * [(e_θ(w) - e_θ(l)) - (e_ref(w) - e_ref(l))]`, shape (B,)."""
    return -0.5 * beta * ((model_err_w - model_err_l) - (ref_err_w - ref_err_l))


def sigmoid_pair_loss(logits: torch.Tensor) -> torch.Tensor:
    """Diffusion-DPO's per-pair loss −log σ(z)."""
    return -F.logsigmoid(logits)


def ipo_pair_loss(logits: torch.Tensor) -> torch.Tensor:
    """IPO's per-pair loss (z − 1/2)²: the logit regressed onto a fixed margin instead of pushed to infinity."""
    return (logits - 0.5).pow(2)


def hinge_pair_loss(logits: torch.Tensor) -> torch.Tensor:
    """The hinge per-pair loss max(0, 1 − z): no gradient once a pair's logit exceeds 1."""
    return F.relu(1 - logits)


PAIR_LOSSES = {"sigmoid": sigmoid_pair_loss, "ipo": ipo_pair_loss, "hinge": hinge_pair_loss}


def dpo_loss(
    model_err_w: torch.Tensor,
    model_err_l: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_l: torch.Tensor,
    beta: float,
    weight: torch.Tensor | None = None,
    form: PairLossForm = "sigmoid",
) -> ObjectiveOutput:
    """Diffusion-DPO loss of a batch of pairs, from per-sample denoising errors (each of shape (B,)).

    `weight` (shape (B,)) multiplies each pair's logit before the sigmoid; SmPO passes its smoothed
    label weight γ(2p - 1) here. `form` picks the per-pair loss of the logit (`PAIR_LOSSES`: the
    sigmoid of Diffusion-DPO, IPO's square or the hinge). Metrics:
    `implicit_acc` (share of pairs with logit > 0; ties count one half, so it is 0.5 at the start),
    `reward_margin` (mean logit: the implicit reward of the winner minus the loser's),
    `model_err_w/l`, `ref_err_w/l` (mean errors) and `model_ref_gap` (mean e_θ - e_ref over all images).
    """
    ref_err_w, ref_err_l = ref_err_w.detach(), ref_err_l.detach()
    logits = dpo_logits(model_err_w, model_err_l, ref_err_w, ref_err_l, beta)
    if weight is not None:
        logits = logits * weight
    if form not in PAIR_LOSSES:
        raise ValueError(f"unknown pair loss form {form!r}; choose one of {sorted(PAIR_LOSSES)}")
    loss = PAIR_LOSSES[form](logits).mean()
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

"""MaPO (Hong et al. 2024, "Margin-aware preference optimization"): reference-free, one pass per image.

With per-sample errors e = mean_{C,H,W} (net(x_t, t, c) − target)² of the winner (w) and loser (l),
one noise and one timestep per pair as Diffusion-DPO, and the official code's (`mapo/utils.py`)
"log-odds" of an error

    f(e) = γ·e / (exp(γ·e) − 1)                      (γ = snr_value, 0.5; f(0) = 1, f falls as e grows)
    margin = f(e(w)) − f(e(l))                       (> 0: the winner is fitted better than the loser)
    loss   = mean e(w) − β · mean log σ(T · margin)  (β = 0.1, T = 1000)

The first term is SFT on the winners (keeps the model on the preferred distribution); the second
widens the margin between them and the losers. No reference model is needed, so a step costs one
forward and backward of the trained UNet and nothing else. For small errors f(e) ≈ 1 − γe/2, so the
margin is about γ/2 · (e(l) − e(w)) and T·γ/2 = 250 plays the role of Diffusion-DPO's −0.5·β.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .types import ObjectiveOutput


def error_odds(err: torch.Tensor, snr: float) -> torch.Tensor:
    """f(e) = γe/(exp(γe) − 1) per sample (γ = `snr`); near e = 0 its series 1 − x/2 + x²/12 (x = γe), which
    keeps the value (1) and the gradient (−γ/2) there."""
    x = snr * err
    small = x.abs() < 1e-4
    safe = torch.where(small, torch.ones_like(x), x)
    return torch.where(small, 1 - x / 2 + x * x / 12, safe / torch.expm1(safe))


def mapo_loss(
    model_err_w: torch.Tensor, model_err_l: torch.Tensor, beta: float = 0.1, snr: float = 0.5, scale: float = 1000.0
) -> ObjectiveOutput:
    """MaPO's loss from the trained model's per-sample errors (each (B,)); see the module docstring.

    Metrics: `implicit_acc` (share of pairs with margin > 0, ties one half), `reward_margin` (mean
    T·margin), `ratio_loss` (mean −β·log σ(T·margin)), `model_err_w`, `model_err_l`.
    """
    margin = scale * (error_odds(model_err_w, snr) - error_odds(model_err_l, snr))
    ratio = beta * F.logsigmoid(margin)
    loss = model_err_w.mean() - ratio.mean()
    with torch.no_grad():
        acc = (margin > 0).float() + 0.5 * (margin == 0).float()
        metrics = {
            "implicit_acc": acc.mean(),
            "reward_margin": margin.mean(),
            "ratio_loss": -ratio.mean(),
            "model_err_w": model_err_w.mean(),
            "model_err_l": model_err_l.mean(),
        }
    return ObjectiveOutput(loss=loss, metrics={k: v.detach() for k, v in metrics.items()})

"""DDIM-InPO (Lu et al., CVPR 2025): Diffusion-DPO on DDIM-inverted latents, with the reparametrised target.

Instead of forward-noising each image x0 with fresh noise, InPO reaches level t by DDIM inversion of x0
under the current model (`sampling.inversion`), x̃_t, and replaces the noise target by the noise that
forward noising would have needed to land there:

    τ_t = (x̃_t − √ᾱ_t · x0) / √(1 − ᾱ_t)

With per-sample errors e = mean_{C,H,W} (ε̂(x̃_t, t, c) − τ_t)² of the winner (w) and loser (l) under the
trained model (θ) and the reference (ref), the loss is Diffusion-DPO's (`objectives.dpo`):

    inside = −0.5 · β · [(e_θ(w) − e_θ(l)) − (e_ref(w) − e_ref(l))],   loss = mean −log σ(inside)

(the paper's x0-space implicit reward, (1 − ᾱ_t)/ᾱ_t · ‖τ − ε̂‖², with the t-dependent factor absorbed into
β, as the official code does). ε̂ is the model's noise prediction (derived from v̂ for v-prediction models).
When x̃_t is formed by forward noising, x̃_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, τ_t is exactly ε and InPO is
Diffusion-DPO.
"""

from __future__ import annotations

import torch

from .dpo import dpo_loss


def inversion_target(inverted: torch.Tensor, x0: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """τ_t = (x̃_t − √ᾱ_t·x0)/√(1 − ᾱ_t), in float32; `alpha_bar` is ᾱ_t per sample, shape (B,)."""
    a = alpha_bar.float().reshape(-1, *([1] * (x0.dim() - 1))).to(x0.device)
    return (inverted.float() - a.sqrt() * x0.float()) / (1 - a).sqrt()


# InPO's loss is Diffusion-DPO's (same form, arguments and metrics) on errors against `inversion_target`
inpo_loss = dpo_loss

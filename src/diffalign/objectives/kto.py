"""Diffusion-KTO (Li et al. 2024, "Aligning diffusion models by optimizing human utility"): single images,
each labelled desirable or undesirable, no pairs.

Each image's implicit reward is Diffusion-DPO's, r = −0.5·β·(e_θ − e_ref), from its denoising errors under
the trained model and the reference (mean over C, H, W). The reference point is the batch's mean reward,
floored at 0 and held constant, z = max(0, mean r) (the official code's KL estimate). With s = +1 for a
desirable image and −1 for an undesirable one, and the official "sigmoid" utility:

    loss = mean over images of  λ_s · (1 − σ(s · (r − z)))      (λ_desirable = λ_undesirable = 1)

A desirable image is pushed to a reward above the reference point and an undesirable one below it, each
on its own, so unpaired ratings train. The official `--beta_dpo` (1000) multiplies e_ref − e_θ without the
0.5: β here is twice it (2000), in the same units as Diffusion-DPO's β. At initialisation (model ==
reference) every r is 0 and the loss is (λ's mean) / 2.
"""

from __future__ import annotations

import torch

from .types import ObjectiveOutput


def kto_loss(
    model_err: torch.Tensor,
    ref_err: torch.Tensor,
    desirable: torch.Tensor,
    beta: float,
    lambda_desirable: float = 1.0,
    lambda_undesirable: float = 1.0,
) -> ObjectiveOutput:
    """Diffusion-KTO's loss of a batch of rated images (errors and the boolean `desirable`, each (N,)).

    Metrics: `implicit_acc` (share of images on their label's side of the reference point, ties one
    half), `kl` (the reference point z), `reward_desirable`/`reward_undesirable` (mean r of each kind, 0
    when the batch has none), `model_err`, `ref_err`, `desirable_share`.
    """
    ref_err = ref_err.detach()
    reward = -0.5 * beta * (model_err - ref_err)
    point = reward.mean().clamp(min=0).detach()
    desirable = desirable.bool().to(reward.device)
    sign = desirable.float() * 2 - 1
    lam = torch.where(desirable, torch.full_like(reward, lambda_desirable), torch.full_like(reward, lambda_undesirable))
    signed = sign * (reward - point)
    loss = (lam * (1 - torch.sigmoid(signed))).mean()
    with torch.no_grad():

        def mean_of(mask: torch.Tensor) -> torch.Tensor:
            return reward[mask].mean() if mask.any() else reward.new_zeros(())

        metrics = {
            "implicit_acc": ((signed > 0).float() + 0.5 * (signed == 0).float()).mean(),
            "kl": point,
            "reward_desirable": mean_of(desirable),
            "reward_undesirable": mean_of(~desirable),
            "model_err": model_err.mean(),
            "ref_err": ref_err.mean(),
            "desirable_share": desirable.float().mean(),
        }
    return ObjectiveOutput(loss=loss, metrics={k: v.detach() for k, v in metrics.items()})

"""GRPO on Stable Diffusion (DanceGRPO, Xue et al. 2025): DDPO's clipped objective with group-relative advantages.

Each prompt c is sampled G times per round; the G rewards r_1..r_G of its group give each trajectory the advantage

    A_i = (r_i − mean(r_1..r_G)) / std(r_1..r_G)                    (`training.advantages.group_advantages`)

and every step t of trajectory i the same PPO-clipped surrogate as DDPO, with an optional KL to the base model
(Flow-GRPO's β; DanceGRPO trains without it):

    loss = mean_i max(−A_i·ρ_{t,i}, −A_i·clamp(ρ_{t,i}, 1 − ε, 1 + ε)) + w · mean_i KL_{t,i}
    ρ_{t,i} = π_θ(x_{t-1}^i | x_t^i, c) / π_θ_old(x_{t-1}^i | x_t^i, c)

The per-step loss is therefore exactly `ddpo_loss`, which this calls: what makes GRPO is where the advantages
come from (the group, not a per-prompt history or the whole batch), which the online loop's advantage phase
decides. DanceGRPO's `train_grpo_sd.py` also clips the advantages (`adv_clip_max`) and computes the same
ratio, clip and `approx_kl` as ddpo-pytorch; it differs from here only in the advantages' normalisation (its
unbiased group std with ε 1e-8, see `training.advantages`) and in treating a NaN advantage, which here counts 0.
"""

from __future__ import annotations

import torch

from .ddpo import ddpo_loss
from .types import ObjectiveOutput


def grpo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_range: float,
    advantage_clip: float,
    kl: torch.Tensor | None = None,
    kl_weight: float = 0.0,
) -> ObjectiveOutput:
    """GRPO's per-step loss for a batch of trajectories, every input (B,): `ddpo_loss` on group-relative advantages.

    `advantages` are expected from `training.advantages.group_advantages`; arguments and metrics are those of
    `ddpo_loss`.
    """
    return ddpo_loss(log_prob, old_log_prob, advantages, clip_range=clip_range, advantage_clip=advantage_clip,
                     kl=kl, kl_weight=kl_weight)

"""GRPO on an SD UNet, as DanceGRPO runs it: DDPO's clipped objective with group-relative advantages.

Each prompt of a round draws a group of `rollout.images_per_prompt` images (DanceGRPO shares the group's initial
noise: `rollout.initial_noise=shared`); each image's advantage is its reward normalised within its group (or by
the round's std: `std=global`), so no statistics are kept across rounds. Everything else is DDPO's
(`methods.ddpo`): the step permutation per image and pass, PPO-clip on the per-step ratios, the optional KL to
the base model. The ratio is exactly 1 on the first pass over a round when training re-scores with the sampler's
guidance and precision (flow_grpo's on-policy check; `tests/training/methods/test_ddpo_grpo.py`).
"""

from __future__ import annotations

from typing import Any

import torch

from ...config.objectives import GRPOConfig
from ...objectives.grpo import grpo_loss
from ..advantages import group_advantages_of
from ..sources.online import Rollouts
from .ddpo import DDPO


class GRPO(DDPO):
    """GRPO on online rollouts (see the module docstring)."""

    loss = staticmethod(grpo_loss)

    cfg: GRPOConfig

    def validate(self, run: Any) -> None:
        """Stochastic steps (DDPO's check), and groups of at least two images."""
        super().validate(run)
        if run.rollout.images_per_prompt < 2:
            raise ValueError("objective grpo normalises each reward within its prompt's group: set "
                             f"rollout.images_per_prompt to at least 2 (got {run.rollout.images_per_prompt})")

    def advantages(self, rollouts: Rollouts) -> torch.Tensor:
        """The rewards (P, I) normalised within each prompt's group of I images (several rewards as the round says:
        `group_advantages_of`)."""
        return group_advantages_of(rollouts, std=self.cfg.std).to(rollouts.rewards.device)

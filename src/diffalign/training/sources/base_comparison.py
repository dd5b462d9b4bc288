"""An online round's comparison with the base model: how often the policy beats it on the same noise.

With a reward and LoRA (`rollout.compare_base`), each round's prompts are also sampled by the base model (the
adapters off, the same seeds and initial noise) and judged by the same reward; the share of prompts whose mean
reward beats the base's (ties half) is logged per round. It costs one more sampling pass per round.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...sampling.trajectory import Trajectory


def win_rate(policy_rewards: torch.Tensor, base_rewards: torch.Tensor) -> float:
    """Share of prompts (rows of the (P, I) rewards) whose mean reward beats the base's, ties counted half; a
    prompt with no scored image on either side is left out (NaN when none is left)."""
    policy_mean, base_mean = policy_rewards.nanmean(dim=1), base_rewards.to(policy_rewards).nanmean(dim=1)
    compared = ~(policy_mean.isnan() | base_mean.isnan())
    policy_mean, base_mean = policy_mean[compared], base_mean[compared]
    wins = (policy_mean > base_mean).float() + 0.5 * (policy_mean == base_mean).float()
    return float(wins.mean())


def base_win_rate(policy: torch.nn.Module, sample: Callable[[], Trajectory],
                  score: Callable[[Trajectory], torch.Tensor], rewards: torch.Tensor) -> float:
    """`win_rate` of the policy's `rewards` (P, I) against the base model's: `sample()` run with the peft
    adapters of `policy` switched off, its images judged by `score` ((P·I,) rewards)."""
    policy.disable_adapters()  # type: ignore[operator]
    try:
        base = sample()
    finally:
        policy.enable_adapters()  # type: ignore[operator]
    return win_rate(rewards, score(base).reshape(rewards.shape))

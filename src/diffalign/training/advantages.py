"""The advantage phase of an online round: the rewards of the round's images turned into per-image advantages.

Three normalisations, each (r − mean) / (std + eps) with statistics from a different set of rewards:

    group_advantages       the prompt's group of k images of this round (GRPO: DanceGRPO, flow_grpo)
    batch_advantages       every image of the round (ddpo-pytorch without per-prompt tracking)
    PerPromptStatTracker   the prompt's last `buffer_size` rewards over rounds, the round's until it holds
                           `min_count` (ddpo-pytorch's per-prompt tracking)

Every std is the population std (divide by n), as ddpo-pytorch's and flow_grpo's numpy `std`; DanceGRPO's
torch `std` divides by n − 1, which makes its advantages smaller by √((k − 1)/k) (0.935 for k = 8): the same
direction, a different step size. A NaN reward marks an image the reward model could not score: it is left
out of every mean, std and buffer, and its advantage is 0, so it neither trains nor shifts the others (the
official code would spread the NaN to its whole group or batch). An infinite reward is an error. Statistics are
computed in float64; the advantages come back in the rewards' floating dtype (float32 for integer rewards).

Several rewards (`rollout.rewards`, `mixed_advantages`): with `per_reward` normalisation each reward is
normalised on its own and the advantage is the weighted sum Σ_k w_k A(r_k) (DanceGRPO's multi-reward
advantages), so rewards on different scales both count; with `sum` the weighted sum of the rewards is
normalised as one reward. With one reward both are that reward's advantages. An image any reward could not score
is left out of every reward's statistics and gets advantage 0.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    from .sources.rollouts import Rollouts

GROUP_EPS = 1e-4  # flow_grpo's: a group whose rewards differ by float noise alone is not blown up to ±1
BATCH_EPS = 1e-8  # ddpo-pytorch's, for the whole-round normalisation
TRACKER_EPS = 1e-6  # ddpo-pytorch's PerPromptStatTracker
NORMALISATIONS = ("per_reward", "sum")


def group_advantages(
    rewards: torch.Tensor, std: Literal["group", "global"] = "group", eps: float = GROUP_EPS
) -> torch.Tensor:
    """GRPO's group-relative advantages of a (P, k) table (row p: the k rewards of prompt p's images): (P, k).

    A = (r − mean of its row) / (s + eps), with s the row's std (`std="group"`, DanceGRPO) or the std of every
    reward of the round about their overall mean (`"global"`, flow_grpo's `global_std` option, which keeps a
    group of near-equal rewards from being inflated to unit scale). NaN rewards are left out and get 0; so does
    every reward of a row with fewer than two finite rewards (nothing to be relative to). eps defaults to
    flow_grpo's 1e-4 (DanceGRPO adds 1e-8).
    """
    if rewards.ndim != 2:
        raise ValueError(f"group_advantages: rewards must be a (prompts, images per prompt) table, "
                         f"not of shape {tuple(rewards.shape)}")
    if std not in ("group", "global"):
        raise ValueError(f"group_advantages: std must be 'group' or 'global', not {std!r}")
    _check_no_inf(rewards)
    values = rewards.to(torch.float64)
    finite = ~torch.isnan(values)
    deviation, variance = _masked_deviation(values, finite, dim=1)
    if std == "global":
        _, variance = _masked_deviation(values, finite, dim=None)
    advantages = deviation / (variance.sqrt() + eps)
    scored = finite & (finite.sum(dim=1, keepdim=True) >= 2)
    return torch.where(scored, advantages, 0.0).to(_result_dtype(rewards))


def mixed_advantages(
    rewards: torch.Tensor,
    parts: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
    normalisation: str,
    normalise: Callable[[str | None, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """The advantages of `rewards`, the weighted sum of the rewards `parts` (each of the rewards' shape, weighted
    by `weights`): `normalise(None, rewards)` with `normalisation="sum"` or fewer than two parts, else (with
    "per_reward") Σ_k weights[k] · normalise(k, parts[k]), each part NaN wherever `rewards` is (an image another
    reward could not score is judged by none). `normalise(name, values)` turns rewards into advantages of the same
    shape (0 where NaN); the name lets it keep statistics per reward (None: the summed reward)."""
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"reward normalisation must be one of {', '.join(NORMALISATIONS)}, not {normalisation!r}")
    if normalisation == "sum" or len(parts) < 2:
        return normalise(None, rewards)
    missing = [name for name in parts if name not in weights]
    if missing:
        raise ValueError(f"mixed_advantages: no weight for the reward(s) {', '.join(map(repr, missing))}")
    unscored = torch.isnan(rewards)
    total = torch.zeros(rewards.shape, dtype=torch.float64, device=rewards.device)
    for name, part in parts.items():
        if part.shape != rewards.shape:
            raise ValueError(f"mixed_advantages: reward {name!r} has shape {tuple(part.shape)}, the summed rewards "
                             f"{tuple(rewards.shape)}")
        total += weights[name] * normalise(name, part.masked_fill(unscored, float("nan"))).to(torch.float64)
    return total.to(_result_dtype(rewards))


def group_advantages_of(rollouts: Rollouts, std: Literal["group", "global"] = "group",
                        eps: float = GROUP_EPS) -> torch.Tensor:
    """GRPO's group-relative advantages (P, I) of a round (`group_advantages` of its (P, I) rewards), with several
    rewards combined as the round says (`rollouts.normalisation`, `mixed_advantages`); on the CPU."""
    return mixed_advantages(
        rollouts.rewards.float().cpu(), {k: v.float().cpu() for k, v in rollouts.reward_parts.items()},
        rollouts.reward_weights, rollouts.normalisation, lambda _, rewards: group_advantages(rewards, std, eps),
    )


def batch_advantages(rewards: torch.Tensor, eps: float = BATCH_EPS) -> torch.Tensor:
    """The round's rewards (N,) normalised by the mean and std of all of them: (N,). NaN rewards are left out
    and get 0. eps is ddpo-pytorch's 1e-8."""
    if rewards.ndim != 1:
        raise ValueError(f"batch_advantages: rewards must be one per image, shape (N,), not {tuple(rewards.shape)}")
    return group_advantages(rewards.reshape(1, -1), std="group", eps=eps).reshape(-1)


class PerPromptStatTracker:
    """ddpo-pytorch's per-prompt reward statistics: each prompt's last `buffer_size` finite rewards across rounds.

    `update` normalises a reward by its prompt's buffer once that holds at least `min_count` rewards (this
    round's included), and by the whole round's rewards before (the global fallback). Unlike ddpo-pytorch's,
    its state can be saved and restored (`state_dict`), so a resumed run normalises exactly as an unbroken one,
    and NaN rewards are neither buffered nor normalised (advantage 0).
    """

    def __init__(self, buffer_size: int, min_count: int, eps: float = TRACKER_EPS) -> None:
        if buffer_size < 1 or min_count < 1:
            raise ValueError(f"PerPromptStatTracker: buffer_size ({buffer_size}) and min_count ({min_count}) "
                             "must be at least 1")
        if min_count > buffer_size:
            raise ValueError(
                f"PerPromptStatTracker: min_count ({min_count}) exceeds buffer_size ({buffer_size}): a buffer "
                "could never hold enough rewards, so every advantage would use the round's statistics"
            )
        self.buffer_size, self.min_count, self.eps = buffer_size, min_count, eps
        self.buffers: dict[str, deque[float]] = {}

    def update(self, prompts: Sequence[str], rewards: torch.Tensor) -> torch.Tensor:
        """Buffer this round's rewards (N,) under their prompts and return their advantages (N,)."""
        if rewards.ndim != 1 or len(prompts) != rewards.shape[0]:
            raise ValueError(f"PerPromptStatTracker.update: {len(prompts)} prompts for rewards of shape "
                             f"{tuple(rewards.shape)}; give one prompt per reward")
        _check_no_inf(rewards)
        values = rewards.detach().to("cpu", torch.float64)
        finite = ~torch.isnan(values)
        batch = values[finite]
        advantages = torch.zeros_like(values)
        rows: dict[str, list[int]] = {}
        for i, prompt in enumerate(prompts):
            rows.setdefault(prompt, []).append(i)
        for prompt, index in rows.items():
            index = torch.tensor(index)
            index = index[finite[index]]
            if len(index) == 0:
                continue
            buffer = self.buffers.setdefault(prompt, deque(maxlen=self.buffer_size))
            buffer.extend(values[index].tolist())
            pool = batch if len(buffer) < self.min_count else torch.tensor(list(buffer), dtype=torch.float64)
            mean, std = pool.mean(), pool.std(correction=0)
            advantages[index] = (values[index] - mean) / (std + self.eps)
        return advantages.to(rewards.device, _result_dtype(rewards))

    def stats(self) -> dict[str, float]:
        """For logging: how many prompts have a buffer, and their mean length."""
        lengths = [len(buffer) for buffer in self.buffers.values()]
        return {"tracked_prompts": float(len(lengths)),
                "mean_buffer_length": sum(lengths) / len(lengths) if lengths else 0.0}

    def state_dict(self) -> dict[str, Any]:
        """The tracker's settings and buffers as plain JSON-serialisable values (floats listed oldest first)."""
        return {"buffer_size": self.buffer_size, "min_count": self.min_count,
                "buffers": {prompt: list(buffer) for prompt, buffer in self.buffers.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the buffers of `state_dict()`; the settings it was saved with must be this tracker's."""
        for key in ("buffer_size", "min_count", "buffers"):
            if key not in state:
                raise KeyError(f"reward tracker state: the key {key!r} is missing")
        for key in ("buffer_size", "min_count"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"reward tracker state: it was saved with {key} {state[key]}, this run has "
                    f"{getattr(self, key)}; resume with the saved value"
                )
        if not isinstance(state["buffers"], Mapping):
            raise ValueError("reward tracker state: 'buffers' must map each prompt to its list of rewards")
        buffers: dict[str, deque[float]] = {}
        for prompt, saved in state["buffers"].items():
            if (not isinstance(saved, list) or len(saved) > self.buffer_size
                    or not all(_is_finite_number(value) for value in saved)):
                raise ValueError(
                    f"reward tracker state: the buffer of prompt {prompt!r} must be a list of at most "
                    f"{self.buffer_size} finite numbers"
                )
            buffers[str(prompt)] = deque((float(value) for value in saved), maxlen=self.buffer_size)
        self.buffers = buffers


def _masked_deviation(
    values: torch.Tensor, finite: torch.Tensor, dim: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deviations from the mean of the finite values (0 where not finite) and their population variance, over
    `dim` (kept) or over everything (dim None)."""
    dims = tuple(range(values.ndim)) if dim is None else (dim,)
    count = finite.sum(dim=dims, keepdim=True).clamp(min=1)
    zeroed = torch.where(finite, values, 0.0)
    mean = zeroed.sum(dim=dims, keepdim=True) / count
    deviation = torch.where(finite, values - mean, 0.0)
    return deviation, deviation.pow(2).sum(dim=dims, keepdim=True) / count


def _check_no_inf(rewards: torch.Tensor) -> None:
    """Infinite rewards are a scorer's bug, not an unscorable image (NaN): refuse them, naming the first."""
    infinite = torch.isinf(rewards).nonzero()
    if len(infinite):
        where = ", ".join(str(i) for i in infinite[0].tolist())
        raise ValueError(
            f"reward [{where}] is {rewards[tuple(infinite[0].tolist())].item()}: a reward must be finite, or NaN "
            "for an image the reward model could not score"
        )


def _is_finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _result_dtype(rewards: torch.Tensor) -> torch.dtype:
    return rewards.dtype if rewards.is_floating_point() else torch.float32

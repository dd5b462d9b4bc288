"""The record of an online round: its prompts, the policy's trajectories, the rewards (and each reward's part
when several are summed) and the advantages.

A round holds P prompt groups of I images each, prompt-major (sample p·I + i is image i of prompt p). The
training phase serves it in units: whole prompt groups (D3PO compares a prompt's images with each other) or
single images (DDPO, GRPO: each image carries its own advantage), as the method declares.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Literal

import numpy as np
import torch

from ...models.conditioning import TextConditioning
from ...sampling.trajectory import Trajectory

Unit = Literal["prompt", "image"]
Normalisation = Literal["per_reward", "sum"]


@dataclass
class Rollouts:
    """A (micro-batch of a) round: P groups of I images sampled by the policy and judged by the reward.

    - prompts: P prompts; trajectories: P·I samples, group-major (sample p·I + i is image i of group p),
      with latents (P·I, K+1, C, h, w), log_probs (P·I, K), images uint8 (P·I, H, W, 3) or None (see `Trajectory`);
    - rewards: float32 (P, I), NaN where the scorer failed on an image: the weighted sum of the `reward_parts`
      when the judge has scorers;
    - advantages: float32 (P, I) from the method's advantage phase, or None (a method that reads the rewards);
    - round, epoch: the round that sampled them and the pass over it being trained;
    - substep: which of the method's micro-steps on this batch (`Method.micro_steps_per_batch`);
    - reward_parts: each reward's scores, float32 (P, I) by name (empty when people judge);
      reward_weights: their weights in `rewards`; normalisation: how a method that normalises rewards treats
      several (`rollout.reward_normalisation`, `training.advantages.mixed_advantages`).
    A batch of image units has I = 1: each group is one image with its prompt.
    """

    round: int
    prompts: list[str]
    trajectories: Trajectory
    rewards: torch.Tensor
    substep: int = 0
    advantages: torch.Tensor | None = None
    epoch: int = 0
    reward_parts: dict[str, torch.Tensor] = field(default_factory=dict)
    reward_weights: dict[str, float] = field(default_factory=dict)
    normalisation: Normalisation = "per_reward"

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def images_per_prompt(self) -> int:
        """I, the images of each group (1 in a batch of image units)."""
        return self.rewards.shape[1]

    def units(self, unit: Unit) -> int:
        """How many units of `unit` the record holds (P groups, or P·I images)."""
        return len(self) if unit == "prompt" else self.rewards.numel()

    def select(self, index: list[int]) -> Rollouts:
        """The groups `index`, in that order."""
        per = self.images_per_prompt
        samples = [p * per + i for p in index for i in range(per)]
        advantages = None if self.advantages is None else self.advantages[index]
        return replace(self, prompts=[self.prompts[p] for p in index], trajectories=self.trajectories.select(samples),
                       rewards=self.rewards[index], advantages=advantages,
                       reward_parts={k: v[index] for k, v in self.reward_parts.items()})

    def select_images(self, index: list[int]) -> Rollouts:
        """The images `index` (flat sample positions), in that order, each as a group of one."""
        per = self.images_per_prompt
        advantages = None if self.advantages is None else self.advantages.reshape(-1, 1)[index]
        return replace(self, prompts=[self.prompts[s // per] for s in index],
                       trajectories=self.trajectories.select(index), rewards=self.rewards.reshape(-1, 1)[index],
                       advantages=advantages,
                       reward_parts={k: v.reshape(-1, 1)[index] for k, v in self.reward_parts.items()})

    def take(self, index: list[int], unit: Unit) -> Rollouts:
        """The units `index` of `unit` (`select` or `select_images`)."""
        return self.select(index) if unit == "prompt" else self.select_images(index)


def concat_trajectories(chunks: list[Trajectory]) -> Trajectory:
    """One trajectory record of several sampled in chunks (the same steps and settings)."""
    if len(chunks) == 1:
        return chunks[0]

    def cat(values):
        if values[0] is None:
            return None
        if isinstance(values[0], np.ndarray):
            return np.concatenate(values)
        if isinstance(values[0], TextConditioning):
            return TextConditioning.cat(values)
        return torch.cat(values)

    first = chunks[0]
    return replace(
        first, latents=cat([c.latents for c in chunks]), log_probs=cat([c.log_probs for c in chunks]),
        images=cat([c.images for c in chunks]), prompts=[p for c in chunks for p in c.prompts],
        seeds=[s for c in chunks for s in c.seeds], cond=cat([c.cond for c in chunks]),
        uncond=cat([c.uncond for c in chunks]), time_ids=cat([c.time_ids for c in chunks]),
    )


def gather_trajectories(trajectory: Trajectory, gather, prompts: list[str]) -> Trajectory:
    """Every process's trajectories of a round, in process order, on each process (`gather`: accelerate's,
    concatenating a tensor of equal shape from every process); `prompts` is the whole round's sample prompts
    (a function of the round, so not sent). Images stay with the process that drew them (None here)."""

    def both(cond: TextConditioning | None) -> TextConditioning | None:
        if cond is None:
            return None
        return TextConditioning(gather(cond.hidden_states), None if cond.pooled is None else gather(cond.pooled))

    seeds = gather(torch.tensor(trajectory.seeds, dtype=torch.long, device=trajectory.latents.device))
    return replace(
        trajectory, latents=gather(trajectory.latents),
        log_probs=None if trajectory.log_probs is None else gather(trajectory.log_probs), images=None,
        prompts=list(prompts), seeds=[int(s) for s in seeds.tolist()], cond=both(trajectory.cond),
        uncond=both(trajectory.uncond), time_ids=None if trajectory.time_ids is None else gather(trajectory.time_ids),
    )


def trajectory_state(trajectory: Trajectory) -> dict:
    """A trajectory record as nested tensors and plain values (for `save_state_files`)."""
    state = {}
    for f in fields(trajectory):
        value = getattr(trajectory, f.name)
        if isinstance(value, TextConditioning):
            value = {"hidden_states": value.hidden_states, "pooled": value.pooled}
        elif isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        state[f.name] = value
    return state


def trajectory_from_state(state: dict) -> Trajectory:
    """The inverse of `trajectory_state`."""
    values = dict(state)
    for key in ("cond", "uncond"):
        if values[key] is not None:
            values[key] = TextConditioning(values[key]["hidden_states"], values[key]["pooled"])
    if values["images"] is not None:
        values["images"] = values["images"].cpu().numpy()
    return Trajectory(**values)

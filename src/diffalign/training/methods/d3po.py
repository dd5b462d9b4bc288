"""D3PO: online DPO on every step of trajectory pairs that the policy sampled this round.

Each prompt of a `Rollouts` batch has I images sampled from one x_T; every pair (i, j) of them (or only
(0, 1)) is a trajectory pair, the higher reward the winner, equal rewards a tie (no gradient) and a NaN
reward (an unscorable or skipped image) a dropped pair. As the official code: the reference is the initial
model (adapters off), classifier-free guidance re-scores the policy's and the reference's steps alike, one
random permutation of the trajectory's steps is drawn per prompt (shared by the members of its pairs), and
each micro-step trains the next step of that permutation; `timestep_fraction` of the steps are trained and
their gradients accumulate into one optimizer step (the loop's accumulation × trained steps).
"""

from __future__ import annotations

import math

import torch
from diffusers import DDIMScheduler

from ...config.objectives import D3POConfig
from ...data.order import derive_seed
from ...objectives import ObjectiveOutput
from ...objectives.d3po import d3po_loss
from ...sampling.trajectory import step_log_prob
from ..randomness import BatchRandom
from ..sources.online import OnlineRollouts, Rollouts
from .base import Method, TrainableModel


def trajectory_pairs(rewards: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(winner, loser, tie) over the flattened P·I samples of `rewards` (P, I): every pair of a prompt's
    images ("all") or images 0 and 1 ("first"); a pair with a NaN reward is left out."""
    prompts, per = rewards.shape
    combos = [(i, j) for i in range(per) for j in range(i + 1, per)] if mode == "all" else [(0, 1)]
    winners, losers, ties = [], [], []
    for p in range(prompts):
        for i, j in combos:
            a, b = float(rewards[p, i]), float(rewards[p, j])
            if math.isnan(a) or math.isnan(b):
                continue
            w, l_ = (i, j) if a >= b else (j, i)
            winners.append(p * per + w)
            losers.append(p * per + l_)
            ties.append(a == b)
    return torch.tensor(winners, dtype=torch.long), torch.tensor(losers, dtype=torch.long), torch.tensor(ties)


class D3PO(Method):
    """D3PO on online rollouts against the initial model (adapters off for LoRA, a frozen copy otherwise)."""

    source = OnlineRollouts
    reference = "base"

    def __init__(self, cfg: D3POConfig) -> None:
        super().__init__(cfg)
        self.scheduler: DDIMScheduler | None = None

    def validate(self, run) -> None:
        """D3PO compares a prompt's images with each other: at least two a prompt."""
        if run.rollout.images_per_prompt < 2:
            raise ValueError(f"objective d3po compares each prompt's images: rollout.images_per_prompt must be at "
                             f"least 2 (got {run.rollout.images_per_prompt})")

    def micro_steps_per_batch(self, run) -> int:
        """The trained steps of each trajectory: ceil(timestep_fraction × rollout.steps), at least 1."""
        return max(1, math.ceil(self.cfg.timestep_fraction * run.rollout.steps))

    def step_of(self, batch: Rollouts) -> torch.Tensor:
        """The trajectory step each sample trains at this substep: entry `substep` of a permutation of the
        steps drawn per prompt from its first image's seed (the same for the members of its pairs) and, from
        the second pass over a round on (`rollout.inner_epochs`), the pass."""
        steps, per = batch.trajectories.num_steps, batch.images_per_prompt
        out = []
        for p in range(len(batch)):
            first = batch.trajectories.seeds[p * per]
            seed = derive_seed(first, 0xD3F0) if batch.epoch == 0 else derive_seed(first, batch.epoch, 0xD3F0)
            generator = torch.Generator().manual_seed(seed)
            out.append(int(torch.randperm(steps, generator=generator)[batch.substep]))
        return torch.tensor(out).repeat_interleave(per)

    def __call__(self, model: TrainableModel, batch: Rollouts, rand: BatchRandom) -> ObjectiveOutput:
        del rand  # the permutation is a function of the prompt's seed, so every substep agrees on it
        if self.scheduler is None:
            self.scheduler = DDIMScheduler.from_config(model.noise_scheduler.config)
        winners, losers, ties = trajectory_pairs(batch.rewards.float().cpu(), self.cfg.pairs)
        if len(winners) == 0:  # every image of the batch was unscorable or skipped: a zero loss that keeps the graph
            zero = sum(p.sum() for p in model.unet.parameters() if p.requires_grad) * 0.0
            return ObjectiveOutput(zero, {})
        used = torch.unique(torch.cat([winners, losers]))
        where = {int(s): k for k, s in enumerate(used)}
        trajectories = batch.trajectories.select(used)
        steps = self.step_of(batch)[used].to(trajectories.latents.device)
        guidance = self.cfg.guidance
        log_prob = step_log_prob(model.unet, self.scheduler, trajectories, steps, guidance=guidance)
        assert model.reference is not None
        with torch.no_grad():
            ref_log_prob = step_log_prob(model.reference.predict, self.scheduler, trajectories, steps, guidance=guidance)
        w = torch.tensor([where[int(s)] for s in winners], device=log_prob.device)
        l_ = torch.tensor([where[int(s)] for s in losers], device=log_prob.device)
        out = d3po_loss(log_prob[w], ref_log_prob[w], log_prob[l_], ref_log_prob[l_], self.cfg.beta, self.cfg.clip,
                        ties.to(log_prob.device))
        rewards = batch.rewards.float()
        out.metrics.update(reward=rewards.nanmean(), ties=ties.float().mean())
        return out

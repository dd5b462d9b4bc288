"""DDPO: PPO-clip on the steps of the policy's own DDIM(η) trajectories, advantages from per-prompt statistics.

Each round the policy samples images (`OnlineRollouts`, trained in single images), the reward judges them, and
the advantage phase normalises each image's reward by its prompt's statistics (`PerPromptStatTracker`, kept
across rounds in the method's state) or the round's. Each micro-step re-scores one step of each image's
trajectory under the current policy (with gradient; classifier-free guidance as when sampling) and takes the
clipped policy-gradient loss against the log-probability recorded when sampling (`objectives.ddpo`). As in
ddpo-pytorch, every pass over a round draws a new random permutation of each image's steps and trains its first
`timestep_fraction` of them, one step per micro-step, accumulated into one optimizer step per batch. With
`kl_weight` > 0 the base model (the adapters off, or a frozen copy) re-scores the same step and the Gaussian KL
between the two steps is added (DPOK).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers import DDIMScheduler

from ...config.objectives import PolicyGradientConfig
from ...data.order import derive_seed
from ...objectives import ObjectiveOutput
from ...objectives.ddpo import ddpo_loss, gaussian_step_kl
from ...sampling.trajectory import rescore_step
from ..advantages import PerPromptStatTracker, batch_advantages, mixed_advantages
from ..randomness import BatchRandom
from ..sources.online import OnlineRollouts, Rollouts
from .base import Method, TrainableModel

STEP_ORDER_TAG = 0xDD90


class DDPO(Method):
    """DDPO on online rollouts (see the module docstring)."""

    source = OnlineRollouts
    rollout_unit = "image"
    reference = "none"
    loss = staticmethod(ddpo_loss)

    def __init__(self, cfg: PolicyGradientConfig) -> None:
        super().__init__(cfg)
        self.reference = "base" if cfg.kl_weight > 0 else "none"  # type: ignore[misc]
        self.scheduler: DDIMScheduler | None = None
        per_prompt = getattr(cfg, "per_prompt_stats", False)
        self.tracker = PerPromptStatTracker(cfg.buffer_size, cfg.min_count) if per_prompt else None
        self.reward_trackers: dict[str, PerPromptStatTracker] = {}  # per reward, with per_reward normalisation

    def validate(self, run: Any) -> None:
        """The ratios need stochastic steps: rollout.eta > 0."""
        if run.rollout.eta <= 0:
            raise ValueError(f"objective {self.cfg.name} trains on the log-probabilities of stochastic DDIM steps: set "
                             f"rollout.eta > 0 (1 as ddpo-pytorch; got {run.rollout.eta})")

    def micro_steps_per_batch(self, run: Any) -> int:
        """The trained steps of each trajectory: ceil(timestep_fraction × rollout.steps), at least 1."""
        return max(1, math.ceil(self.cfg.timestep_fraction * run.rollout.steps))

    def advantages(self, rollouts: Rollouts) -> torch.Tensor:
        """Each image's reward normalised by its prompt's buffered statistics (or the round's); several rewards as
        the round says (`mixed_advantages`), with per_reward normalisation by a tracker per reward."""
        prompts = [p for p in rollouts.prompts for _ in range(rollouts.images_per_prompt)]

        def normalise(name: str | None, rewards: torch.Tensor) -> torch.Tensor:
            if self.tracker is None:
                return batch_advantages(rewards.flatten()).reshape(rewards.shape)
            return self.tracker_of(name).update(prompts, rewards.flatten()).reshape(rewards.shape)

        parts = {name: part.float().cpu() for name, part in rollouts.reward_parts.items()}
        return mixed_advantages(rollouts.rewards.float().cpu(), parts, rollouts.reward_weights,
                                rollouts.normalisation, normalise).to(rollouts.rewards.device)

    def tracker_of(self, reward: str | None) -> PerPromptStatTracker:
        """The per-prompt statistics of reward `reward` (None: of the summed reward, `self.tracker`)."""
        assert self.tracker is not None, "per-prompt statistics are off"
        if reward is None:
            return self.tracker
        if reward not in self.reward_trackers:
            self.reward_trackers[reward] = PerPromptStatTracker(self.cfg.buffer_size, self.cfg.min_count)
        return self.reward_trackers[reward]

    def state_dict(self) -> dict[str, Any]:
        """The per-prompt buffers (nothing without per-prompt statistics): the summed reward's under "tracker",
        each reward's (per_reward normalisation of several) under "reward_trackers"."""
        if self.tracker is None:
            return {}
        state: dict[str, Any] = {"tracker": self.tracker.state_dict()}
        if self.reward_trackers:
            state["reward_trackers"] = {name: t.state_dict() for name, t in self.reward_trackers.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.tracker is None:
            return
        if "tracker" in state:
            self.tracker.load_state_dict(state["tracker"])
        for name, saved in (state.get("reward_trackers") or {}).items():
            self.tracker_of(name).load_state_dict(saved)

    def step_of(self, batch: Rollouts) -> torch.Tensor:
        """The trajectory step each image trains at this substep: entry `substep` of a permutation of the steps
        drawn from the image's seed and the pass."""
        steps = batch.trajectories.num_steps
        out = []
        for seed in batch.trajectories.seeds:
            generator = torch.Generator().manual_seed(derive_seed(seed, batch.epoch, STEP_ORDER_TAG))
            out.append(int(torch.randperm(steps, generator=generator)[batch.substep]))
        return torch.tensor(out)

    def __call__(self, model: TrainableModel, batch: Rollouts, rand: BatchRandom) -> ObjectiveOutput:
        del rand  # the step permutation is a function of each image's seed and the pass
        if self.scheduler is None:
            self.scheduler = DDIMScheduler.from_config(model.noise_scheduler.config)
        trajectories = batch.trajectories
        device = trajectories.latents.device
        steps = self.step_of(batch).to(device)
        if trajectories.log_probs is None:
            raise ValueError("the rollouts have no log-probabilities (rollout.eta=0)")
        old = trajectories.log_probs[torch.arange(len(trajectories), device=device), steps]
        step = rescore_step(model.unet, self.scheduler, trajectories, steps, guidance=self.cfg.guidance)
        kl = None
        if self.cfg.kl_weight > 0:
            if model.reference is None:
                raise ValueError("kl_weight > 0 needs the base model as reference")
            with torch.no_grad():
                base = rescore_step(model.reference.predict, self.scheduler, trajectories, steps,
                                    guidance=self.cfg.guidance)
            kl = gaussian_step_kl(step.mean, base.mean, step.std)
        assert batch.advantages is not None, "the advantage phase did not run"
        out = self.loss(step.log_prob, old, batch.advantages.flatten().to(device), clip_range=self.cfg.clip_range,
                        advantage_clip=self.cfg.advantage_clip, kl=kl, kl_weight=self.cfg.kl_weight)
        out.metrics.update(reward=batch.rewards.float().nanmean())
        return out

"""The reward phase of an online round: who judges the sampled images.

`RewardJudge` scores them with the round's reward: `rollout.reward`, or the weighted sum of the scorers of
`rollout.rewards`, each scorer's scores kept as the reward's parts; an image any scorer cannot score gets the
reward NaN and is listed. `HumanJudge` writes the round to
`OUTPUT_DIR/rounds/round-NNNNNN/` and waits until a person has decided every prompt with `diffalign label`
(the chosen image 1, the others 0, all images of a tie 0.5, a skip NaN).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ...config.schema import RolloutConfig
from ...data.label_rounds import is_complete, read_decisions, write_round
from ...rewards.weighted import WeightedScorer, WeightedScorers, WeightedScores, parse_weighted
from ...sampling.trajectory import Trajectory

LABEL_POLL_S = 2.0

Judgement = tuple[torch.Tensor, dict[str, torch.Tensor]]  # the rewards (P, I) and each reward's scores (P, I)


def rollout_rewards(rollout: RolloutConfig) -> list[WeightedScorer]:
    """The scorers that judge a round and their weights: `rollout.rewards`, or `rollout.reward` with weight 1
    when that is empty (ValueError naming `rollout.rewards.NAME` for a bad entry)."""
    if rollout.rewards:
        return parse_weighted(rollout.rewards, "rollout.rewards")
    return [WeightedScorer(rollout.reward, 1.0, {}, "rollout.reward")]


def judge_description(weights: dict[str, float], normalisation: str) -> str:
    """Who judges a run, for its description: the reward's name (with its weight unless 1), the weighted sum
    of several with their normalisation, or people when there are no rewards."""
    if not weights:
        return "people (diffalign label)"
    if len(weights) == 1:
        ((name, weight),) = weights.items()
        return name if weight == 1 else f"{weight:g} x {name}"
    return (" + ".join(f"{weight:g} x {name}" for name, weight in weights.items())
            + f" (rollout.reward_normalisation={normalisation})")


class RewardJudge:
    """Scorers as the judge of each round: one (a name) or the weighted sum of several (`rollout_rewards`)."""

    def __init__(self, rewards: str | Sequence[WeightedScorer], device: torch.device, batch_size: int) -> None:
        entries = [WeightedScorer(rewards, key="rollout.reward")] if isinstance(rewards, str) else list(rewards)
        self.rewards = WeightedScorers.build(entries, device=str(device))
        self.batch_size = batch_size
        self.failures: list[str] = []  # "round R image I ('prompt'): why", every unscorable image of the run

    @property
    def weights(self) -> dict[str, float]:
        """Each reward's weight in the sum, by name."""
        return self.rewards.weights

    def scores(self, trajectories: Trajectory) -> WeightedScores:
        """Every reward's scores (N,) of the decoded images against their prompts and their weighted sum, NaN
        where a scorer failed, with the failures."""
        return self.rewards.score(trajectories.images, trajectories.prompts, batch_size=self.batch_size)

    def score(self, trajectories: Trajectory) -> tuple[torch.Tensor, list]:
        """The reward (N,) of each decoded image against its prompt (the weighted sum), NaN where a scorer
        failed, and the scorers' failures."""
        scores = self.scores(trajectories)
        return scores.total.float(), scores.failures

    def judge(self, round_: int, prompts: list[str], trajectories: Trajectory) -> Judgement:
        """The rewards (P, I) of a round's P prompt groups (the weighted sum) and each reward's scores (P, I)."""
        scores = self.scores(trajectories)
        for failure in scores.failures:
            self.failures.append(f"round {round_} image {failure.index} "
                                 f"({trajectories.prompts[failure.index]!r}): {failure.reason}")
        shape = (len(prompts), -1)
        return scores.total.float().reshape(shape), {k: v.float().reshape(shape) for k, v in scores.parts.items()}


class HumanJudge:
    """A person, through `diffalign label`, as the judge of each round."""

    def __init__(self, rounds_dir: Path) -> None:
        self.rounds_dir = rounds_dir
        self.failures: list[str] = []  # a person skips instead: nothing fails
        self.weights: dict[str, float] = {}  # one judgement, no reward parts

    def judge(self, round_: int, prompts: list[str], trajectories: Trajectory) -> Judgement:
        """Write the round for `diffalign label`, wait until every prompt is decided, and turn the choices into
        rewards (P, I): 1 for the chosen image, 0 for the others, 0.5 for all images of a tie, NaN for a skip
        (no reward parts)."""
        folder = self.rounds_dir / f"round-{round_:06d}"
        images: np.ndarray = trajectories.images
        write_round(folder, round_, prompts, images)
        if not is_complete(folder):
            print(f"round {round_}: {len(prompts)} prompts to label. In another terminal run\n"
                  f"    diffalign label {folder}\nand pick the preferred image of each prompt; training continues "
                  f"when all are decided (the choices are kept if this run stops: rerun it with train.resume=latest).",
                  flush=True)
            while not is_complete(folder):
                time.sleep(LABEL_POLL_S)
        per = len(trajectories) // len(prompts)
        rewards = torch.full((len(prompts), per), float("nan"))
        for prompt, choice in read_decisions(folder).items():
            if choice == "tie":
                rewards[prompt] = 0.5
            elif choice != "skip":
                rewards[prompt] = 0.0
                rewards[prompt, int(choice)] = 1.0
        return rewards, {}

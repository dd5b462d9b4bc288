"""The reward phase of an online round: who judges the sampled images.

`RewardJudge` scores them with a registered scorer (`rollout.reward`) in one batch-scoring call; an image the
scorer cannot score gets the reward NaN and is listed. `HumanJudge` writes the round to
`OUTPUT_DIR/rounds/round-NNNNNN/` and waits until a person has decided every prompt with `diffalign label`
(the chosen image 1, the others 0, all images of a tie 0.5, a skip NaN).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ...data.label_rounds import is_complete, read_decisions, write_round
from ...rewards import build_scorer
from ...rewards.batch import score_in_batches
from ...sampling.trajectory import Trajectory

LABEL_POLL_S = 2.0


class RewardJudge:
    """A registered scorer as the judge of each round."""

    def __init__(self, name: str, device: torch.device, batch_size: int) -> None:
        self.scorer = build_scorer(name, device=str(device))
        self.batch_size = batch_size
        self.failures: list[str] = []  # "round R image I ('prompt'): why", every unscorable image of the run

    def score(self, trajectories: Trajectory) -> tuple[torch.Tensor, list]:
        """The reward (N,) of each decoded image against its prompt, NaN where the scorer failed, and the
        scorer's failures."""
        result = score_in_batches(self.scorer, trajectories.images, trajectories.prompts, batch_size=self.batch_size)
        return result.values().float(), result.failures

    def judge(self, round_: int, prompts: list[str], trajectories: Trajectory) -> torch.Tensor:
        """The rewards (P, I) of a round's P prompt groups."""
        values, failures = self.score(trajectories)
        for failure in failures:
            self.failures.append(f"round {round_} image {failure.index} "
                                 f"({trajectories.prompts[failure.index]!r}): {failure.reason}")
        return values.reshape(len(prompts), -1)


class HumanJudge:
    """A person, through `diffalign label`, as the judge of each round."""

    def __init__(self, rounds_dir: Path) -> None:
        self.rounds_dir = rounds_dir
        self.failures: list[str] = []  # a person skips instead: nothing fails

    def judge(self, round_: int, prompts: list[str], trajectories: Trajectory) -> torch.Tensor:
        """Write the round for `diffalign label`, wait until every prompt is decided, and turn the choices into
        rewards (P, I): 1 for the chosen image, 0 for the others, 0.5 for all images of a tie, NaN for a skip."""
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
        return rewards

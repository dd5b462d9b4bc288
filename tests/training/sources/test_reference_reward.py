"""`rollout.reward=path/to/file.py:NAME`: the online round's reward judge built from the user's own scorer."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffalign.training.sources.judges import RewardJudge

SCORER = '''
import numpy as np


def redness(images, prompts):
    return [float(np.asarray(image)[..., 0].mean()) / 255 for image in images]
'''


def test_a_reward_judge_from_a_file_reference_scores_a_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd(), str(tmp_path))])
    (tmp_path / "my_reward.py").write_text(SCORER)
    monkeypatch.chdir(tmp_path)
    reds = [0, 51, 102, 255]
    round_ = SimpleNamespace(  # a round's decoded images (uint8 (N, H, W, 3)) and prompts, as a Trajectory holds them
        images=np.stack([np.full((8, 8, 3), (red, 9, 9), np.uint8) for red in reds]),
        prompts=["a", "a", "b", "b"],
    )
    judge = RewardJudge("my_reward.py:redness", torch.device("cpu"), batch_size=3)
    rewards, failures = judge.score(round_)
    torch.testing.assert_close(rewards, torch.tensor(reds, dtype=torch.float32) / 255)
    assert failures == []

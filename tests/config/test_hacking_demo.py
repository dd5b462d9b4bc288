"""The reward-hacking demo (configs/demo/hacking.yaml): the GRPO demo's rounds trained on the partial reward of
examples/rewards/shape_area.py, watched by the monitor with the full `shapes` reward on held-out prompts."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from diffalign.config import RunConfig, load_config
from diffalign.data.prompts import read_training_prompts
from diffalign.rewards import build_scorer
from diffalign.training.sources.monitor import check_monitor, held_out_note, monitor_prompts

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "demo"


def _square(side: int, size: int = 32) -> Image.Image:
    """A white square of `side` pixels on black, like the shapes world's pictures."""
    image = Image.new("RGB", (size, size))
    image.paste((255, 255, 255), (4, 4, 4 + side, 4 + side))
    return image


def test_the_hacking_demo_trains_the_grpo_demos_rounds_on_the_partial_reward_watched_by_the_full_one(monkeypatch):
    monkeypatch.chdir(ROOT)  # the reward is a file path relative to the repository root, as the comment says
    cfg = load_config(RunConfig, DEMO / "hacking.yaml")
    grpo = load_config(RunConfig, DEMO / "grpo.yaml")
    assert cfg.objective.name == "grpo" and cfg.train.output_dir == "runs/demo-hacking"
    assert cfg.rollout.reward == "examples/rewards/shape_area.py:area" and not cfg.rollout.rewards
    for key in ("prompts", "prompts_per_round", "images_per_prompt", "steps", "eta", "guidance"):
        assert getattr(cfg.rollout, key) == getattr(grpo.rollout, key), key
    assert cfg.train.max_steps == grpo.train.max_steps and cfg.model.pretrained == grpo.model.pretrained
    m = cfg.rollout.monitor
    assert m.scorers == {"shapes": 1.0} and (m.every, m.patience, m.stop, m.keep_best) == (10, 2, False, True)
    check_monitor(cfg)  # the gold scorer and the prompts, as a run checks them before loading models
    assert held_out_note(monitor_prompts(cfg), read_training_prompts(cfg.rollout.prompts)) is None  # held out
    assert "diffalign train configs/demo/hacking.yaml" in (DEMO / "hacking.yaml").read_text()
    scorer = build_scorer(cfg.rollout.reward)
    assert scorer.score([_square(8)], ["a small red circle"]).tolist() == pytest.approx([0.0625])


def test_the_partial_reward_is_the_shapes_area_whatever_the_prompt_asks_for(monkeypatch):
    monkeypatch.chdir(ROOT)
    area = build_scorer("examples/rewards/shape_area.py:area")
    small, large = _square(8), _square(16)
    scores = area.score([small, large, large], ["a small white square on a black background"] * 2 + ["x"])
    assert scores.tolist() == pytest.approx([64 / 1024, 256 / 1024, 256 / 1024])
    shapes = build_scorer("shapes").score([small, large], ["a small white square on a black background"] * 2)
    assert shapes[0] > shapes[1]  # the full reward prefers the small square the prompt asks for

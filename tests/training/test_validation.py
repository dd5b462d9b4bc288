import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffalign.config.core import load_config
from diffalign.config.schema import RunConfig
from diffalign.evaluation.grid import comparison_grid
from diffalign.training.loop import train
from diffalign.training.validation import Validator


def test_validation_grid_is_captioned_base_and_tuned_per_seed():
    prompts, seeds = ["a red circle on a blue background"], 2
    base = np.stack([np.full((32, 32, 3), 10 * (k + 1), np.uint8) for k in range(seeds)])
    tuned = base + 100
    validator = object.__new__(Validator)  # only the grid: no model behind it
    validator.cfg = load_config(RunConfig, None, [f"validation.prompts=[{prompts[0]}]", f"validation.seeds={seeds}"])
    validator.base_images = base
    validator._draw = lambda unet: tuned
    path, grid = validator.run(torch.nn.Linear(1, 1), 5, Path("unused"), contextlib.nullcontext, save=False)
    assert path.name == "step-00000005.png" and grid.dtype == np.uint8
    _, layout = _grid_layout(prompts, seeds)
    assert grid.shape == (layout.height, layout.width, 3)
    for seed in range(seeds):
        for model, images in enumerate((base, tuned)):
            x0, y0, x1, y1 = layout.cell_box(0, seed, model)
            assert (grid[y0:y1, x0:x1] == images[seed, 0, 0]).all()
    x0, y0, x1, y1 = layout.prompt_box(0)
    assert (grid[y0:y1, x0:x1] < 128).any()  # the prompt is written beside its row


def _grid_layout(prompts, seeds, size=32):
    return comparison_grid(prompts, list(range(seeds)), ["base", "tuned"], lambda *_: np.zeros((size, size, 3), np.uint8))


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["lora.enabled=false", "objective.name=sft"]])
def test_validation_grids_show_base_and_tuned(tiny_models, pair_file, tmp_path, extra):
    out = tmp_path / "run"
    cfg = load_config(RunConfig, None, [
        f"model.pretrained={tiny_models['sd15']}", f"data.path={pair_file}", f"train.output_dir={out}",
        "train.max_steps=3", "train.batch_size=2", "train.learning_rate=1e-2", "train.warmup_steps=0",
        "validation.every=2", "validation.prompts=[a red circle on a blue background]", "validation.seeds=2",
        "validation.steps=3", "data.resolution=32", *extra,
    ])
    train(cfg)
    grids = sorted((out / "validation").glob("step-*.png"))
    assert [g.name for g in grids] == ["step-00000002.png", "step-00000003.png"]  # every 2 steps and the end
    grid = np.asarray(Image.open(grids[-1]))
    _, layout = _grid_layout(["a red circle on a blue background"], 2)  # one prompt; base | tuned for 2 seeds
    assert grid.shape == (layout.height, layout.width, 3)
    (bx0, by0, bx1, by1), (tx0, ty0, tx1, ty1) = layout.cell_box(0, 0, 0), layout.cell_box(0, 0, 1)
    base, tuned = grid[by0:by1, bx0:bx1], grid[ty0:ty1, tx0:tx1]
    first = np.asarray(Image.open(grids[0]))
    assert np.array_equal(first[by0:by1, bx0:bx1], base)  # the base images are drawn once and reused
    assert not np.array_equal(base, tuned)  # training changed the model
    assert list((out / "logs").rglob("events.out.tfevents.*"))  # sent to tensorboard


@pytest.mark.slow
def test_wandb_tracker_gets_metrics_and_grids(tiny_models, pair_file, tmp_path, monkeypatch):
    pytest.importorskip("wandb")  # optional: `pip install wandb`
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    out = tmp_path / "run"
    cfg = load_config(RunConfig, None, [
        f"model.pretrained={tiny_models['sd15']}", f"data.path={pair_file}", f"train.output_dir={out}",
        "train.max_steps=2", "train.batch_size=2", "train.log_every=1", "train.trackers=[wandb]",
        "validation.every=2", "validation.prompts=[a red circle on a blue background]", "validation.seeds=1",
        "validation.steps=2", "data.resolution=32",
    ])
    train(cfg)
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    assert list(run.glob("files/media/images/validation_2_*.png"))
    records = next(run.glob("run-*.wandb")).read_bytes()
    assert all(key.encode() in records for key in ("loss", "implicit_acc", "reward_margin", "grad_norm"))

import numpy as np
import pytest
from PIL import Image

from diffalign.config.core import load_config
from diffalign.config.schema import RunConfig
from diffalign.training.loop import train
from diffalign.training.validation import image_grid


def test_image_grid_places_each_image():
    a = np.zeros((2, 3, 3), np.uint8)
    b = np.full((2, 3, 3), 9, np.uint8)
    grid = image_grid([[a, b], [b, a]], gap=1)
    assert grid.shape == (5, 7, 3)
    assert (grid[0:2, 4:7] == 9).all() and (grid[3:5, 0:3] == 9).all() and (grid[2] == 255).all()


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
    assert grid.shape == (32, 4 * 32 + 3 * 2, 3)  # one prompt; base | tuned for 2 seeds
    base, tuned = grid[:, :32], grid[:, 34:66]
    first = np.asarray(Image.open(grids[0]))
    assert np.array_equal(first[:, :32], base)  # the base images are drawn once and reused
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

"""pipelines/sd15-methods.yaml and sdxl-methods.yaml end to end on tiny replicas standing in for the hub models:
the presets train, both prompt sets are evaluated with PickScore, HPS v2.1 and CLIP score replicas, and the
methods tables are written. (ImageReward's replica is checked in tests/rewards/test_imagereward.py.)"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from diffalign.cli.pipeline import load_recipe, run_recipe
from diffalign.rewards.replicas import save_clip_replica, save_hps_replica, save_open_clip_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scorer_args(tmp_path_factory) -> str:
    """`--scorer-option`s pointing PickScore, CLIP score and HPS v2.1 at tiny random replicas."""
    root = tmp_path_factory.mktemp("replicas")
    clip = save_clip_replica(root / "clip", "tiny", seed=0)
    config = save_open_clip_config(root / "tiny-hps-clip.json")
    hps = save_hps_replica(root / "HPS_v2.1_compressed.pt", "tiny-hps-clip", config, seed=1)
    options = {"pickscore.model": clip, "pickscore.processor": clip, "clip.model": clip, "hpsv2.1.checkpoint": hps,
               "hpsv2.1.architecture": "tiny-hps-clip", "hpsv2.1.architecture_config": config}
    return " ".join(f"--scorer-option {key}={value}" for key, value in options.items())


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_a_real_model_recipe_runs_on_tiny_replicas(family, tiny_models, pair_file, scorer_args, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    captions = tmp_path / "pickapic" / "data"
    captions.mkdir(parents=True)
    pq.write_table(pa.table({"caption": ["a red cat", "a blue dog", "a red cat"]}), captions / "test_unique-00000.parquet")
    monkeypatch.setenv("DIFFALIGN_PICKAPIC_PROMPTS", str(tmp_path / "pickapic"))
    recipe = ROOT / "pipelines" / f"{family}-methods.yaml"
    assert yaml.safe_load(recipe.read_text())["vars"]["scorers"] == "pickscore,hpsv2.1,imagereward,clip"
    train_args = " ".join([
        f"model.pretrained={tiny_models[family]}", "model.vae=null", "model.frozen_dtype=float32",
        f"data.path={pair_file}", "data.resolution=32", "train.batch_size=2", "train.grad_accum=1", "train.max_steps=1",
        "train.scale_lr=false", "train.learning_rate=1e-4", "train.mixed_precision=no",
        "train.gradient_checkpointing=false", "validation.every=0", "train.checkpoint_every=0",
    ])
    out = tmp_path / "out"
    _, steps = load_recipe(recipe, [f"out={out}", "methods=dpo,mapo", f"train_args={train_args}",
                                    "scorers=pickscore,hpsv2.1,clip", f"scorer_args={scorer_args}",
                                    "eval_args=--max-prompts 2 --seeds 1 --steps 2 --size 32 --device cpu --dtype float32"])
    assert run_recipe(steps, in_process=True) == 0
    for name in ("parti", "pickapic"):
        table = (out / f"methods-{name}.md").read_text()
        assert {line.split("|")[1].strip() for line in table.splitlines()[2:] if line.startswith("| ")} == {"dpo", "mapo"}
        results = (out / f"eval-{name}" / "results.json").read_text()
        assert all(scorer in results for scorer in ('"pickscore"', '"hpsv2.1"', '"clip"'))
    assert "2 prompts (parti)" in (out / "methods-parti.md").read_text()

"""The asset builders, run small: deterministic, prefix-consistent, and their outputs load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMALL_BUILD = ["--pool", "96", "--batch", "8", "--vae-steps", "3", "--eval-prompts", "2", "--eval-every", "2"]


def _build(out: Path, unet_steps: int, snapshots: Path | None = None) -> None:
    cmd = [sys.executable, str(ROOT / "scripts" / "build_tiny_model.py"), "--out", str(out),
           "--unet-steps", str(unet_steps), *SMALL_BUILD]
    if snapshots:
        cmd += ["--snapshots", str(snapshots)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@pytest.mark.slow
def test_tiny_model_build_is_deterministic_and_a_shorter_run_is_a_prefix(tmp_path):
    from diffusers import StableDiffusionPipeline

    _build(tmp_path / "long", 4, snapshots=tmp_path / "snap")
    _build(tmp_path / "short", 2)
    weights = "unet/diffusion_pytorch_model.safetensors"
    # a new process with the same seed and the same steps writes the same bytes (the shipped model was
    # the step-2000 snapshot of a longer run, which this property makes equal to a 2000-step build)
    assert (tmp_path / "short" / weights).read_bytes() == (tmp_path / "snap" / "step-00002" / weights).read_bytes()
    assert (tmp_path / "long" / weights).read_bytes() != (tmp_path / "short" / weights).read_bytes()
    info = json.loads((tmp_path / "long" / "build_info.json").read_text())
    assert [e["step"] for e in info["evaluations"]] == [2, 4]

    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "short")
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle on a blue background", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (32, 32, 3)


@pytest.mark.slow
def test_demo_data_builder_writes_loadable_pairs_and_held_out_prompts(tmp_path):
    from diffalign.data.pairs import decided_pairs, load_pair_table
    from diffalign.evaluation.prompts import load_prompts
    from diffalign.synthetic.domain import is_held_out, parse_caption

    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_demo_data.py"), "--model", str(ROOT / "assets" / "tiny-sd"),
         "--out", str(tmp_path), "--groups", "6", "--k", "2", "--steps", "4", "--min-margin", "0"],
        check=True, capture_output=True, text=True,
    )
    table, dropped = decided_pairs(load_pair_table(str(tmp_path / "pairs_train.parquet")))
    assert len(table) == 6 and dropped == 0
    for row in table:
        winner = 0 if row["label_0"] == 1.0 else 1
        assert row[f"score_{winner}"] >= row[f"score_{1 - winner}"]
        assert not is_held_out(parse_caption(row["caption"]))
    prompts = load_prompts(tmp_path / "prompts_heldout.txt")
    assert prompts and all(is_held_out(parse_caption(p)) for p in prompts)

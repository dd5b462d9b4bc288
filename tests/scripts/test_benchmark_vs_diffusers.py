"""scripts/benchmark_vs_diffusers.py drives both trainers and prints the per-step comparison."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Stands in for diffusers' train_diffusion_dpo.py: takes its flags, checks the dataset folder it gets.
STAND_IN = '''
import argparse, pathlib, time
p = argparse.ArgumentParser()
for flag in ["--pretrained_model_name_or_path", "--dataset_name", "--dataset_split_name", "--output_dir",
             "--resolution", "--train_batch_size", "--max_train_steps", "--rank", "--learning_rate",
             "--lr_warmup_steps", "--checkpointing_steps", "--report_to", "--seed", "--beta_dpo", "--mixed_precision"]:
    p.add_argument(flag, required=True)
a = p.parse_args()
assert (pathlib.Path(a.dataset_name) / "train.parquet").is_file() and a.dataset_split_name == "train"
time.sleep(0.01 * int(a.max_train_steps))
'''


@pytest.mark.slow
def test_benchmark_runs_both_trainers(tmp_path, pair_file, tiny_models):
    script = tmp_path / "train_diffusion_dpo.py"
    script.write_text(STAND_IN)
    result = subprocess.run(
        [sys.executable, "scripts/benchmark_vs_diffusers.py", "--script", str(script), "--model",
         str(tiny_models["sd15"]), "--data", str(pair_file), "--short", "1", "--long", "3", "--repeats", "1",
         "--rows", "script,reused", "--work", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("4 pairs per step, 32 px, LoRA r=8")
    assert lines[1].startswith("latent cache: built in") and "over 3 steps (one epoch of 12 decided pairs)" in lines[1]
    names = ["diffusers research script", "diffalign, latent cache + reused pre-pass (sweep)"]
    assert [line.split("  ")[1].strip() for line in lines[2:]] == names
    assert all("ms/step" in line and "fixed" in line and "all-in" in line and "peak resident memory" in line
               for line in lines[2:])
    logs = {path.name: path.read_text() for path in (tmp_path / "work").glob("*.log")}
    # the sweep's untimed first run computes them after clearing the folder, its timed runs find them
    assert "3 micro-steps, 3 computed now" in logs["first-1.log"]
    reused = [text for name, text in logs.items() if name.startswith("1-")]
    assert len(reused) == 2 and all(" 0 computed now" in text for text in reused)

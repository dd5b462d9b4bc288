"""Two processes (DDP over gloo, CPU, launched by torchrun) train the online methods as one process does.

A round's prompts are spread over the processes, the round is gathered on every process before the advantage
phase, and micro-batch j of a pass takes the units j·B·W … of its order, process r the r-th B of them
(`sources/online.py`). So a run on 2 processes with `train.batch_size=B` trains, at every optimizer step, the
units that one process trains with batch 2B: the same rounds, rewards, advantages, trained steps and order.

The one-process run here takes those 2B units as two accumulated micro-batches of B (`train.grad_accum`
doubled), the shape each process runs, rather than as one of 2B. The UNet does not round a batch of 16 as two
batches of 8 (6.6e-7 apart on outputs of ~4.6), and Adam's first step, lr·g/(|g| + eps), turns that rounding
into differences of up to a whole learning rate on the weights whose gradient is about eps: one process with
batch 2B against one with B accumulated twice, no second process involved, ends 2.1e-4 of the weights' scale
apart on a GRPO run like DDPO's case below, and 7e-3 on D3PO with rounds of 8 prompts and B = 2 (49 weights already up to
1.3e-3 apart after its first step, where the policy still equals its reference and many gradients cancel to
~1e-9). With the same micro-batch shape the only difference left is where the two halves of the gradient are
summed, and halves add exactly: the weights come out bitwise equal in all three cases.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# rounds of 4 prompts x 2 images, DDIM 3 steps (1 trained per image and pass), without validation or checkpoints
SHRINK = ["rollout.prompts_per_round=4", "rollout.images_per_prompt=2", "rollout.steps=3",
          "rollout.sample_batch_size=4", "rollout.compare_base=false", "validation.every=0",
          "train.checkpoint_every=0", "train.log_every=1", "train.trackers=[]", "train.cpu=true"]

# one re-scored step per image (a micro-step per batch): with several, one process sums a batch's substeps before
# the next batch's and two sum each their own, then all-reduce, an order that changes the float rounding (seen:
# 5e-5 relative in a gradient norm); the clip range of ddpo-pytorch, so the second pass clips
ONE_STEP = ["objective.timestep_fraction=0.3", "objective.clip_range=1e-4"]

# (config, units per process per micro-step, overrides): 2 optimizer steps per pass, 2 rounds in each run.
# DDPO: images, per-prompt statistics kept across rounds, reshuffled, 2 passes per round.
# DGPO: whole prompt groups sampled deterministically, group advantages, one noised timestep per batch (its
# group draws), reshuffled. (GRPO is DDPO's path with group advantages: DDPO's case and DGPO's advantages cover it.)
# D3PO: whole prompt groups (pairs of trajectories), reshuffled, 2 passes per round.
CASES = {
    "ddpo": ("configs/demo/ddpo.yaml", 2, ["rollout.inner_epochs=2", "train.max_steps=8", *ONE_STEP]),
    "dgpo": ("configs/demo/dgpo.yaml", 1, ["rollout.inner_epochs=1", "train.max_steps=4", "objective.timesteps=1"]),
    "d3po": ("configs/demo/d3po.yaml", 1, ["rollout.shuffle=true", "rollout.inner_epochs=2", "train.max_steps=8"]),
}
PORTS = {"ddpo": 29541, "dgpo": 29543, "d3po": 29545}
ROUND_STATS = ("reward_mean", "reward_std", "advantage_std", "advantage_abs")


def _train(config: str, out: Path, batch: int, grad_accum: int, overrides: list[str]) -> list[str]:
    return ["-m", "diffalign.cli.main", "train", config, *SHRINK, *overrides, f"train.output_dir={out}",
            f"train.batch_size={batch}", f"train.grad_accum={grad_accum}"]


def _run_together(*commands: list[str]) -> list[subprocess.CompletedProcess]:
    """Run the commands at the same time (each single-threaded; their results do not depend on timing) and
    return their results once all have ended, each checked to have succeeded."""
    running = [subprocess.Popen(c, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for c in commands]
    results = []
    for command, process in zip(commands, running):
        out, err = process.communicate()
        results.append(subprocess.CompletedProcess(command, process.returncode, out, err))
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    return results


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_train_the_online_methods_as_one(tmp_path, name):
    config, batch, overrides = CASES[name]
    one, two = tmp_path / "one", tmp_path / "two"
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
              "--master_port", str(PORTS[name])]
    _, result = _run_together([sys.executable, *_train(config, one, batch, 2, overrides)],
                              [*launch, *_train(config, two, batch, 1, overrides)])
    unit = "images" if name == "ddpo" else "prompts"
    assert f"{batch} {unit}/device x 1 accumulation x 2 process(es) = {2 * batch} {unit} per optimizer step" \
        in result.stdout

    a = load_file(str(one / "pytorch_lora_weights.safetensors"))
    b = load_file(str(two / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys()
    moved = max((v.abs().max().item() for k, v in a.items() if "lora_B" in k), default=0.0)
    assert moved > 0  # LoRA B starts at zero: the runs did train
    # the tolerance of test_multiprocess.py (float rounding of a gradient summed in another order, which Adam's
    # normalisation lifts to ~1e-5 on weights of ~0.1); measured: equal (see the module docstring)
    scale = max(v.abs().max().item() for v in a.values())
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 2e-4 * scale, (worst, scale)

    # every optimizer step: the mean loss over both processes' micro-batches and the global gradient norm
    steps_one, steps_two = _lines(one / "metrics.jsonl"), _lines(two / "metrics.jsonl")
    assert [m["step"] for m in steps_two] == [m["step"] for m in steps_one]
    for key in ("loss", "grad_norm"):
        assert [m[key] for m in steps_two] == pytest.approx([m[key] for m in steps_one], rel=1e-5, abs=1e-7), key

    # every round: the statistics of the gathered round, and the means of the method's metrics over every
    # process's micro-steps (not only the main process's)
    rounds_one, rounds_two = _lines(one / "rounds.jsonl"), _lines(two / "rounds.jsonl")
    assert [r["round"] for r in rounds_two] == [r["round"] for r in rounds_one] == [0, 1]
    trained = sorted(set(rounds_one[0]) - set(ROUND_STATS) - {"round", "win_rate_vs_base", "unscored", "sample_s",
                                                                 "reward_s", "train_s"})
    assert "loss" in trained and "reward" in trained
    for key in (*[k for k in ROUND_STATS if k in rounds_one[0]], *trained):
        assert [r[key] for r in rounds_two] == pytest.approx([r[key] for r in rounds_one], rel=1e-5, abs=1e-7), key

"""Checkpoints survive a hard kill and a resumed run ends with the same weights as an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffalign.config.core import load_config
from diffalign.config.schema import RunConfig
from diffalign.training.checkpoint import list_checkpoints
from diffalign.training.loop import TrainingDiverged, train

ROOT = Path(__file__).resolve().parents[2]
RUN = ["train.max_steps=8", "train.batch_size=6", "train.checkpoint_every=2", "train.keep_checkpoints=2",
       "train.log_every=1", "train.trackers=[]", "lora.dropout=0.1", "data.random_flip=true",
       "data.empty_prompt_prob=0.3"]


def _train_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "diffalign.cli.main", "train", f"train.output_dir={out}", *RUN, *extra]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "pytorch_lora_weights.safetensors"))


@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = tmp_path / "whole"  # one thread each: the uninterrupted run goes on beside the one to be killed
    log = (tmp_path / "whole.log").open("w")
    uninterrupted = subprocess.Popen(_train_cmd(whole), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    broken = tmp_path / "broken"
    proc = subprocess.Popen(_train_cmd(broken), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list_checkpoints(broken) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (broken / "pytorch_lora_weights.safetensors").exists(), "the run finished before it was killed"
    checkpoints = list_checkpoints(broken)
    assert checkpoints and json.loads((checkpoints[-1] / "state.json").read_text())["step"] < 8

    subprocess.run(_train_cmd(broken, "train.resume=latest"), check=True, cwd=ROOT, env=env, capture_output=True)
    assert uninterrupted.wait() == 0, (tmp_path / "whole.log").read_text()[-3000:]
    log.close()
    a, b = _weights(whole), _weights(broken)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps = [json.loads(line)["step"] for line in (broken / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))
    assert [p.name for p in list_checkpoints(broken)] == ["step-00000004", "step-00000006"]


def test_resume_latest_without_checkpoints_starts_fresh_and_bad_path_is_an_error(tmp_path):
    cfg = load_config(RunConfig, None, [f"train.output_dir={tmp_path / 'run'}", "train.resume=/nowhere/step-1"])
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        train(cfg)


@pytest.mark.slow
def test_non_finite_loss_stops_with_the_last_checkpoint_intact(tmp_path, capsys):
    out = tmp_path / "nan"
    cfg = load_config(RunConfig, None, [
        f"train.output_dir={out}", "train.batch_size=2", "train.max_steps=50", "train.checkpoint_every=1",
        "train.learning_rate=1e30", "train.warmup_steps=0", "train.max_grad_norm=null", "train.trackers=[]",
    ])
    with pytest.raises(TrainingDiverged, match=r"non-finite loss at step \d+.*last good checkpoint is .*step-"):
        train(cfg)
    last = list_checkpoints(out)[-1]
    weights = load_file(str(last / "trainable.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())

    # a checkpoint of the format before FSDP support (optimizer state keyed by index) is refused by name
    state = json.loads((last / "state.json").read_text())
    del state["format"]
    (last / "state.json").write_text(json.dumps(state))
    old = load_config(RunConfig, None, [f"train.output_dir={out}", "train.batch_size=2", f"train.resume={last}"])
    with pytest.raises(ValueError, match=r"step-\d+ was written by an older diffalign \(checkpoint format 1"):
        train(old)

"""The last good checkpoint is good: weights that went non-finite are never saved nor named, and resuming from
the named checkpoint works; a checkpoint that cannot be read back is refused in one line naming the file."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffalign.cli.main import main
from diffalign.config.core import load_config
from diffalign.config.schema import RunConfig
from diffalign.training.checkpoint import checkpoint_dir, list_checkpoints
from diffalign.training.loop import TrainingDiverged, train

TINY = ["train.batch_size=2", "train.log_every=1", "train.trackers=[]", "validation.every=0", "data.max_pairs=8"]


def _overrides(model: Path, pairs: Path, out: Path, *extra: str) -> list[str]:
    return [f"model.pretrained={model}", f"data.path={pairs}", f"train.output_dir={out}", *TINY, *extra]


def test_weights_that_overflow_are_not_saved_and_the_named_checkpoint_resumes(tiny_models, pair_file, tmp_path):
    out = tmp_path / "run"
    # warm-up from 0: step 1 leaves the weights as they are, step 2's rate (5e38) overflows float32 while the
    # loss that led to it was finite
    absurd = ["train.max_steps=4", "train.checkpoint_every=1", "train.learning_rate=1e39", "train.warmup_steps=2",
              "train.lr_scheduler=constant_with_warmup", "train.max_grad_norm=null"]
    cfg = load_config(RunConfig, None, _overrides(tiny_models["sd15"], pair_file, out, *absurd))
    with pytest.raises(TrainingDiverged) as caught:
        train(cfg)
    good = checkpoint_dir(out, 1)
    assert str(caught.value).startswith(f"non-finite weights after step 2: stopped before saving its checkpoint. The "
                                        f"last good checkpoint is {good}; lower train.learning_rate")
    assert list_checkpoints(out) == [good]
    assert all(torch.isfinite(w).all() for w in load_file(str(good / "trainable.safetensors")).values())

    # the way on the message gives: a lower learning rate (applied on resume) and train.resume=latest
    sane = [*absurd, "train.learning_rate=1e-3", "train.resume=latest"]
    result = train(load_config(RunConfig, None, _overrides(tiny_models["sd15"], pair_file, out, *sane)))
    assert all(torch.isfinite(w).all() for w in load_file(str(result.weights)).values())
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2, 3, 4] and log[-1]["lr"] == pytest.approx(1e-3)


@pytest.fixture(scope="module")
def finished_run(tiny_models, pair_file, tmp_path_factory) -> Path:
    """A run of 3 steps with the checkpoints of steps 1 and 2."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(load_config(RunConfig, None, _overrides(tiny_models["sd15"], pair_file, out, "train.max_steps=3",
                                                  "train.checkpoint_every=1", "train.keep_checkpoints=2")))
    return out


def test_a_run_continues_longer_on_the_schedule_of_its_new_length(finished_run, tiny_models, pair_file, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    longer = ["train.max_steps=5", "train.checkpoint_every=1", "train.warmup_steps=0", "train.resume=latest"]
    train(load_config(RunConfig, None, _overrides(tiny_models["sd15"], pair_file, out, *longer)))
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2, 3, 4, 5]
    # cosine over 5 steps without warm-up from step 3 on (the rate after each step, as logged)
    cosine = [1e-3 * 0.5 * (1 + math.cos(math.pi * s / 5)) for s in (3, 4, 5)]
    assert [row["lr"] for row in log[2:]] == pytest.approx(cosine)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


DAMAGE = {
    "truncated weights": ("trainable.safetensors", _truncate,
                          "trainable.safetensors is truncated or not a safetensors file"),
    "missing optimizer state": ("optimizer.json", Path.unlink, "optimizer.json is missing"),
    "garbled state": ("state.json", lambda p: p.write_text('{"step": 2, "micro'), "state.json is not valid JSON"),
    "garbled schedule": ("schedule.json", lambda p: p.write_text("\x00\x01"), "schedule.json is not valid JSON"),
    "empty RNG tensors": ("rng-0.safetensors", lambda p: p.write_bytes(b""), "rng-0.safetensors is truncated"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_checkpoint_is_refused_in_one_line_naming_the_file(finished_run, tiny_models, pair_file, tmp_path,
                                                                     capsys, case):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    name, damage, problem = DAMAGE[case]
    newest = checkpoint_dir(out, 2)
    damage(newest / name)
    overrides = _overrides(tiny_models["sd15"], pair_file, out, "train.max_steps=3", "train.checkpoint_every=1")
    for resume in ("latest", str(newest)):
        assert main(["train", *overrides, f"train.resume={resume}"]) == 2
        err = capsys.readouterr().err
        assert err.splitlines()[0].startswith(f"diffalign train: error: checkpoint {newest} cannot be read: {problem}")
        assert err.splitlines()[0].endswith(f"; resume from the one before it (train.resume={checkpoint_dir(out, 1)}), "
                                            f"or delete step-00000002 (train.resume=latest then takes step-00000001)")
        assert len(err.splitlines()) == 2 and "Traceback" not in err


def test_the_only_checkpoint_damaged_says_to_start_again(finished_run, tiny_models, pair_file, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    shutil.rmtree(checkpoint_dir(out, 1))
    _truncate(checkpoint_dir(out, 2) / "optimizer.safetensors")
    assert main(["train", *_overrides(tiny_models["sd15"], pair_file, out, "train.max_steps=3"),
                 "train.resume=latest"]) == 2
    assert capsys.readouterr().err.splitlines()[0].endswith(
        "no older checkpoint to fall back on: start the run again (train.overwrite=true deletes this one, or use "
        "another train.output_dir)")


def test_a_repeated_run_into_a_finished_runs_folder_is_refused_and_overwrite_replaces_it(finished_run, tiny_models,
                                                                                       pair_file, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = (out / "pytorch_lora_weights.safetensors").read_bytes()
    overrides = _overrides(tiny_models["sd15"], pair_file, out, "train.max_steps=1", "train.checkpoint_every=0")
    assert main(["train", *overrides]) == 2
    assert f"train.output_dir={out} already holds another run (checkpoints step-00000001, step-00000002; " \
           f"pytorch_lora_weights.safetensors; config.yaml; run.json)" in capsys.readouterr().err
    assert (out / "pytorch_lora_weights.safetensors").read_bytes() == before

    assert main(["train", *overrides, "train.overwrite=true"]) == 0
    said = capsys.readouterr().out
    assert f"train.overwrite=true: deleted the previous run's checkpoints, pytorch_lora_weights.safetensors, " \
           f"config.yaml, run.json, metrics.jsonl in {out}" in said
    assert list_checkpoints(out) == [] and len((out / "metrics.jsonl").read_text().splitlines()) == 1

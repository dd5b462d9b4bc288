"""The reference-output pre-pass: the same run with and without it, its reuse, its refusals."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffalign.config.core import load_config
from diffalign.config.schema import RunConfig
from diffalign.training.loop import train
from diffalign.training.methods import build_method
from diffalign.training.reference_errors import store_folder, wants_precompute


def _cfg(model, pairs, out, cache_dir, *overrides):
    return load_config(RunConfig, None, [
        f"model.pretrained={model}", f"data.path={pairs}", f"train.output_dir={out}", f"data.cache_dir={cache_dir}",
        "train.max_steps=3", "train.batch_size=2", "train.grad_accum=2", "train.log_every=1", "train.warmup_steps=0",
        "data.empty_prompt_prob=0.5", "train.checkpoint_every=0", "validation.every=0", "train.trackers=[]",
        *overrides,
    ])


def _losses(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# KTO runs channels-last: batching 6 images instead of 4 must not change its convolutions' errors either
@pytest.mark.parametrize("family,objective,layout", [("sdxl", "dpo", "false"), ("sd15", "kto", "true")])
def test_a_run_with_precomputed_reference_errors_is_the_run_without(tiny_models, pair_file, tmp_path, family, objective,
                                                                    layout, capsys):
    args = (tiny_models[family], pair_file)
    common = (f"objective.name={objective}", f"train.channels_last={layout}")
    plain = train(_cfg(*args, tmp_path / "plain", tmp_path / "cache", *common, "reference.precompute=off"))
    capsys.readouterr()
    pre = train(_cfg(*args, tmp_path / "pre", tmp_path / "cache", *common, "reference.precompute=on",
                     "reference.precompute_batch=6"))
    assert "reference errors: 6 micro-steps, 6 computed now" in capsys.readouterr().out
    a, b = _losses(plain.output_dir), _losses(pre.output_dir)
    for key in ("loss", "ref_err_w", "ref_err_l") if objective == "dpo" else ("loss",):
        assert [row[key] for row in b] == pytest.approx([row[key] for row in a], rel=1e-6, abs=1e-7)
    if objective == "dpo":  # the policy starts equal to the reference: ln 2, as without the pre-pass
        assert b[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    first, second = load_file(plain.weights), load_file(pre.weights)
    assert all(torch.allclose(first[k], second[k], atol=1e-6) for k in first)


def test_runs_differing_in_beta_reuse_them_and_a_longer_run_extends_them(tiny_models, pair_file, tmp_path, capsys):
    args = (tiny_models["sd15"], pair_file, tmp_path / "run", tmp_path / "cache", "reference.precompute=on")
    train(_cfg(*args))
    capsys.readouterr()
    args = (*args, "train.overwrite=true")  # each run replaces the one before in the output folder
    train(_cfg(*args, "objective.beta=500", "objective.loss=hinge", "train.learning_rate=1e-4"))
    assert "6 micro-steps, 0 computed now" in capsys.readouterr().out
    train(_cfg(*args, "train.max_steps=5"))
    assert "10 micro-steps, 4 computed now" in capsys.readouterr().out
    train(_cfg(*args, "train.seed=1"))  # other draws: other errors
    assert "6 micro-steps, 6 computed now" in capsys.readouterr().out


def test_errors_stored_for_other_draws_are_refused(tiny_models, pair_file, tmp_path):
    args = (tiny_models["sd15"], pair_file, tmp_path / "run", tmp_path / "cache", "reference.precompute=on")
    cfg = _cfg(*args)
    train(cfg)
    (path,) = (store_folder(cfg, build_method(cfg.objective), 1) / "rank-0").glob("steps-*.safetensors")
    tensors = load_file(path)
    tensors["timesteps"][1] = (tensors["timesteps"][1] + 1) % 1000
    save_file(tensors, str(path))
    cfg.train.overwrite = True  # a second run into the same folder
    with pytest.raises(RuntimeError, match="micro-step 1 were drawn at other timesteps"):
        train(cfg)


def test_when_the_pre_pass_applies(tiny_models, pair_file, tmp_path):
    def decide(*overrides, cache=True):
        cfg = _cfg(tiny_models["sd15"], pair_file, tmp_path, tmp_path, *overrides)
        return wants_precompute(cfg, build_method(cfg.objective), cache)

    assert decide() and not decide(cache=False) and decide("reference.precompute=on", cache=False)
    assert not decide("reference.precompute=off") and not decide("objective.name=mapo")
    assert decide("objective.name=dcpo") and decide("objective.name=kto") and not decide("objective.name=seppo")
    with pytest.raises(ValueError, match="objective 'mapo' does not declare reference errors"):
        decide("objective.name=mapo", "reference.precompute=on")
    with pytest.raises(ValueError, match="data.streaming=true"):
        decide("data.streaming=true", "reference.precompute=on")

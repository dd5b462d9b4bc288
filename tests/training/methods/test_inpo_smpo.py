"""InPO and SmPO: per-pair inversion (a batch of 4 equals 4 batches of 1), the UNet's timesteps in each
inversion mode, SmPO's table transform and bounds, the weight reaching the loss from every reader, short runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from diffalign.config.core import load_config
from diffalign.config.objectives import InPOConfig, SmPOConfig
from diffalign.config.schema import RunConfig
from diffalign.data.record import PairBatch, Side
from diffalign.models.conditioning import encode_prompts
from diffalign.models.reference import AdapterDisabledReference
from diffalign.objectives.smpo import smoothed_weight
from diffalign.training.loop import train
from diffalign.training.methods.base import TrainableModel
from diffalign.training.methods.inpo import InPO
from diffalign.training.methods.smpo import SmPO
from diffalign.training.randomness import BatchRandom

CAPTIONS = ["a red circle", "a blue square", "a green triangle", "a yellow circle"]


@pytest.fixture(scope="module")
def tiny(tiny_models, lora_parts):
    parts = lora_parts(tiny_models["sd15"], shift=0.03)
    model = TrainableModel(parts.unet, AdapterDisabledReference(parts.unet), parts.noise_scheduler, "epsilon")
    cond = encode_prompts(parts, CAPTIONS)
    g = torch.Generator().manual_seed(0)
    w, l_ = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    batch = PairBatch(list(CAPTIONS), Side(list(CAPTIONS), latents=w, cond=cond), Side(list(CAPTIONS), latents=l_, cond=cond))
    return model, batch


def _rows(batch, index):
    pick = lambda side: Side(side.own_captions[index:index + 1], latents=side.latents[index:index + 1],  # noqa: E731
                             cond=side.cond[index:index + 1])
    return PairBatch(batch.captions[index:index + 1], pick(batch.w), pick(batch.l))


@pytest.mark.parametrize("cfg", [InPOConfig(), SmPOConfig(), InPOConfig(inversion_mode="official")],
                         ids=["inpo", "smpo-renoise", "inpo-official"])
def test_a_batch_of_four_equals_four_batches_of_one(tiny, cfg):
    model, batch = tiny
    method = InPO(cfg)
    with torch.no_grad():
        err, ref = method.errors(model, batch, BatchRandom(3, 7, 4))
        parts = [method.errors(model, _rows(batch, r), BatchRandom(3, 7, 1, rank=r, world=4)) for r in range(4)]
    def winners_then_losers(values):
        return torch.cat([v[:1] for v in values] + [v[1:] for v in values])

    assert torch.allclose(err, winners_then_losers([e for e, _ in parts]), rtol=1e-4, atol=1e-6)
    assert torch.allclose(ref, winners_then_losers([r for _, r in parts]), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(err, ref)  # the policy differs from its reference


def _spy_timesteps(unet):
    seen: list[int] = []
    handle = unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.extend(torch.as_tensor(args[1] if len(args) > 1 else kwargs["timestep"])
                                                 .reshape(-1).tolist()), with_kwargs=True)
    return seen, handle


@pytest.mark.parametrize("mode", ["consistent", "official"])
def test_which_timesteps_reach_the_unet(tiny, mode):
    model, batch = tiny
    seen, handle = _spy_timesteps(model.unet)
    try:
        with torch.no_grad():
            InPO(InPOConfig(inversion_mode=mode)).errors(model, batch, BatchRandom(0, 1, 4))
    finally:
        handle.remove()
    assert (min(seen) >= 0) == (mode == "consistent")  # the official code's first inverse step runs at -99


def _scored_table(pair_file, tmp_path, ties=False):
    table = pq.read_table(pair_file).to_pylist()
    rng = np.random.default_rng(0)
    for i, row in enumerate(table):
        row["score_0"], row["score_1"] = float(rng.uniform(0.1, 0.3)), float(rng.uniform(0.1, 0.3))
    path = tmp_path / "scored.parquet"
    pq.write_table(pa.Table.from_pylist(table), path)
    return path, table


def test_the_table_is_re_decided_by_the_scores_and_weighted_with_reproducible_bounds(pair_file, tmp_path):
    import datasets

    path, rows = _scored_table(pair_file, tmp_path)
    run = load_config(RunConfig, None, [f"data.path={path}", f"train.output_dir={tmp_path / 'run'}"])
    out = SmPO(SmPOConfig()).transform_table(datasets.Dataset.from_parquet(str(path)), run)
    decided = [r for r in rows if r["label_0"] in (0, 1)]
    scores = [s for r in decided for s in (r["score_0"], r["score_1"])]
    bounds = json.loads((tmp_path / "run" / "score_bounds.json").read_text())
    assert (bounds["low"], bounds["high"]) == (min(scores), max(scores))
    again = SmPO(SmPOConfig()).transform_table(datasets.Dataset.from_parquet(str(path)), run)
    assert again["weight"] == out["weight"]
    for row, new in zip(rows, out):
        if row["label_0"] not in (0, 1):
            assert new["label_0"] == row["label_0"] and new["weight"] == 0.0  # a human tie stays a tie
            continue
        assert new["label_0"] == float(row["score_0"] >= row["score_1"])
        expected = smoothed_weight(torch.tensor([row["score_0"]], dtype=torch.float64),
                                   torch.tensor([row["score_1"]], dtype=torch.float64), min(scores), max(scores))
        assert new["weight"] == pytest.approx(abs(expected.item()), rel=1e-9)
    with pytest.raises(ValueError, match="score_0', 'score_1'.*data.relabel_with"):
        SmPO(SmPOConfig()).transform_table(datasets.Dataset.from_parquet(str(pair_file)), run)


def _cfg(model, data, out, *extra):
    return load_config(RunConfig, None, [
        f"model.pretrained={model}", f"data.path={data}", "train.batch_size=2", "train.max_steps=2",
        "train.learning_rate=1e-2", "train.warmup_steps=0", "train.trackers=[]", "validation.every=0",
        f"train.output_dir={out}", *extra])


@pytest.mark.parametrize("reader", ["table", "stream", "cache"])
def test_the_smoothed_weight_reaches_the_loss_from_every_reader(
        tiny_models, pair_file, tmp_path, monkeypatch, reader, reader_overrides):
    path, rows = _scored_table(pair_file, tmp_path)
    decided = [r for r in rows if r["label_0"] in (0, 1)]
    scores = [s for r in decided for s in (r["score_0"], r["score_1"])]
    low, high = min(scores), max(scores)
    expected = {round(abs(smoothed_weight(torch.tensor([r["score_0"]]), torch.tensor([r["score_1"]]), low, high).item()), 5)
                for r in decided}
    seen: list[float] = []
    real = SmPO.__call__

    def spy(self, model, batch, rand):
        seen.extend(batch.weight.tolist())
        return real(self, model, batch, rand)

    monkeypatch.setattr(SmPO, "__call__", spy)
    extra = ["objective.name=smpo", f"objective.score_bounds=[{low},{high}]"]
    extra += reader_overrides(reader, lambda more: _cfg(tiny_models["sd15"], path, tmp_path / reader, *extra, *more),
                              tmp_path / "cache")
    result = train(_cfg(tiny_models["sd15"], path, tmp_path / reader, *extra))
    assert len(seen) == 4 and all(round(w, 5) in expected for w in seen) and any(w > 0 for w in seen)
    assert math.isfinite(result.metrics["loss"]) and result.metrics["weight"] > 0


@pytest.mark.parametrize("family,name", [("sd15", "inpo"), ("sd21-v", "inpo"), ("sdxl", "smpo")])
def test_a_short_run_trains(tiny_models, pair_file, tmp_path, family, name):
    path, _ = _scored_table(pair_file, tmp_path)
    result = train(_cfg(tiny_models[family], path, tmp_path / family, f"objective.name={name}"))
    weights = load_file(str(result.weights))
    assert any(not torch.equal(w, torch.zeros_like(w)) for k, w in weights.items() if "lora_B" in k)
    assert math.isfinite(result.metrics["loss"])

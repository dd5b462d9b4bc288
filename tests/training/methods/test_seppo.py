"""The SePPO method: reference samples drawn by the micro-step's reference, the criterion's loss on the
tiny models, runs from every winners-only source, and exact resume with the reference pool."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diffalign.config.core import load_config
from diffalign.config.objectives import SePPOConfig
from diffalign.config.schema import ModelConfig, RunConfig
from diffalign.data.record import PairBatch, Side
from diffalign.models.conditioning import encode_prompts
from diffalign.models.loading import load_parts
from diffalign.models.reference import AdapterDisabledReference
from diffalign.sampling.trajectory import sample_trajectory
from diffalign.training.checkpoint import list_checkpoints
from diffalign.training.loop import train
from diffalign.training.methods.base import TrainableModel
from diffalign.training.methods.seppo import SePPO
from diffalign.training.randomness import BatchRandom
from diffalign.training.sources.reference_samples import ReferenceSampled

CAPTIONS = ["a red circle", "a blue square", "a green triangle"]


def _winners(parts, resolution=32):
    size = resolution // 4
    latents = torch.randn(len(CAPTIONS), 4, size, size, generator=torch.Generator().manual_seed(3))
    cond = encode_prompts(parts, CAPTIONS)
    return PairBatch(list(CAPTIONS), Side(list(CAPTIONS), latents=latents, cond=cond))


def _source(parts, *overrides):
    cfg = load_config(RunConfig, None, ["data.resolution=32", "rollout.steps=4", "rollout.guidance=3",
                                        "rollout.eta=0.5", "rollout.sample_batch_size=2", *overrides])
    return ReferenceSampled(SimpleNamespace(empty=None), cfg, parts, torch.device("cpu"))


def test_a_reference_sample_is_what_the_reference_model_draws_for_the_caption(tiny_models, lora_parts):
    parts = lora_parts(tiny_models["sd15"], shift=0.05)  # the policy differs from the reference
    source = _source(parts)
    source.attach(parts.unet, AdapterDisabledReference(parts.unet))
    batch = _winners(parts)
    seeds = BatchRandom(0, 5, len(batch)).seeds()
    side = source.sample(batch, seeds)
    base = load_parts(ModelConfig(pretrained=str(tiny_models["sd15"])))  # the reference, as a plain pipeline UNet
    expected = sample_trajectory(base, base.unet, CAPTIONS, seeds, steps=4, guidance=3, eta=0.5, resolution=32,
                                 decode=False).latents[:, -1]
    assert side.seeds == seeds and side.own_captions == CAPTIONS
    assert torch.allclose(side.latents, expected, atol=1e-5)
    assert side.cond is batch.w.cond  # conditioned in the loss as its winner
    policy = sample_trajectory(parts, parts.unet, CAPTIONS, seeds, steps=4, guidance=3, eta=0.5, resolution=32,
                               decode=False).latents[:, -1]
    assert not torch.allclose(side.latents, policy, atol=1e-3)


def test_at_initialisation_every_anchor_ties_and_the_loss_is_ln2(tiny_models, lora_parts):
    parts = lora_parts(tiny_models["sd15"])
    reference = AdapterDisabledReference(parts.unet)
    source = _source(parts)
    source.attach(parts.unet, reference)
    batch = _winners(parts)
    batch.l = source.sample(batch, [1, 2, 3])
    model = TrainableModel(parts.unet, reference, parts.noise_scheduler, "epsilon")
    out = SePPO(SePPOConfig())(model, batch, BatchRandom(0, 0, len(batch)))
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert out.metrics["sample_as_winner"].item() == 1.0  # the tie rule: s = -1


def _cfg(model, data, out, *extra):
    return load_config(RunConfig, None, [
        f"model.pretrained={model}", f"data.path={data}", "objective.name=seppo", "rollout.steps=3",
        "rollout.sample_batch_size=4", "reference.every=1", "reference.keep=2", "train.batch_size=2",
        "train.max_steps=4", "train.checkpoint_every=2", "train.keep_checkpoints=1", "train.learning_rate=1e-2",
        "train.warmup_steps=0", "train.lr_scheduler=constant", "train.trackers=[]", "validation.every=0",
        f"train.output_dir={out}", *extra])


@pytest.mark.parametrize("selection", ["random", "latest", "initial"])
def test_a_run_trains_and_a_killed_run_resumes_to_the_same_weights(tiny_models, pair_file, tmp_path, monkeypatch,
                                                                    selection):
    model, chosen = tiny_models["sd15"], f"reference.selection={selection}"
    whole = train(_cfg(model, pair_file, tmp_path / "whole", chosen))
    a = load_file(str(whole.weights))
    assert any(not torch.equal(t, torch.zeros_like(t)) for k, t in a.items() if "lora_B" in k)
    assert math.isfinite(whole.metrics["loss"])

    calls, real = {"n": 0}, SePPO.__call__

    def crash_in_step_four(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # after the step-2 checkpoint
            raise RuntimeError("killed")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SePPO, "__call__", crash_in_step_four)
    with pytest.raises(RuntimeError, match="killed"):
        train(_cfg(model, pair_file, tmp_path / "part", chosen))
    monkeypatch.setattr(SePPO, "__call__", real)
    assert [p.name for p in list_checkpoints(tmp_path / "part")] == ["step-00000002"]
    resumed = train(_cfg(model, pair_file, tmp_path / "part", chosen, "train.resume=latest"))
    b = load_file(str(resumed.weights))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_trains_from_an_image_folder_and_from_its_latent_cache(tiny_models, tmp_path, winners_folder):
    from diffalign.data.cache import build_cache

    model = tiny_models["sd15"]
    plain = train(_cfg(model, winners_folder, tmp_path / "plain", "train.max_steps=2", "data.random_flip=false"))
    cfg = _cfg(model, winners_folder, tmp_path / "cached", "train.max_steps=2", "data.random_flip=false",
               f"data.cache_dir={tmp_path / 'cache'}", "data.cache=require")
    build_cache(load_parts(cfg.model, unet=False), cfg.model, cfg.data, shard_size=8, batch_size=4)
    cached = train(cfg)
    a, b = load_file(str(plain.weights)), load_file(str(cached.weights))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)  # the cache is lossless


@pytest.mark.parametrize("family", ["sd21-v", "sdxl"])
def test_a_step_trains_on_v_prediction_and_sdxl(tiny_models, pair_file, tmp_path, family):
    result = train(_cfg(tiny_models[family], pair_file, tmp_path / family, "train.max_steps=2",
                        "train.checkpoint_every=0", "objective.share_noise=false"))
    weights = load_file(str(result.weights))
    assert any(not torch.equal(w, torch.zeros_like(w)) for k, w in weights.items() if "lora_B" in k)
    assert math.isfinite(result.metrics["loss"])


def test_sft_trains_on_an_image_folder_with_sidecar_captions(tiny_models, tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    for i, colour in enumerate(["red", "blue", "green", "yellow"]):
        Image.new("RGB", (32, 32), colour).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a {colour} background")
    result = train(load_config(RunConfig, None, [
        f"model.pretrained={tiny_models['sd15']}", f"data.path={folder}", "objective.name=sft", "train.max_steps=2",
        "train.batch_size=2", "train.trackers=[]", "validation.every=0", f"train.output_dir={tmp_path / 'sft'}"]))
    assert math.isfinite(result.metrics["loss"])

"""The latent and text cache: lossless against on-the-fly encoding, resumable, keyed by its inputs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from diffalign.config.core import load_config
from diffalign.config.schema import RunConfig
from diffalign.data.cache import CachedPairs, build_cache, cache_folders, find_cache
from diffalign.data.pairs import PreferencePairs
from diffalign.data.record import collate_items
from diffalign.models.loading import load_parts
from diffalign.training.encode import encode_batch
from diffalign.training.loop import train
from diffalign.training.randomness import BatchRandom

from ..permissions import modes, umask


def _cfg(model, pairs, tmp_path, *extra):
    return load_config(RunConfig, None, [
        f"model.pretrained={model}", f"data.path={pairs}", f"data.cache_dir={tmp_path / 'cache'}",
        f"train.output_dir={tmp_path / 'run'}", "data.random_flip=true", "data.empty_prompt_prob=0.5",
        "train.max_steps=2", "train.batch_size=3", "train.log_every=1", "train.warmup_steps=0",
        "train.trackers=[]", *extra,
    ])


def _build(cfg, shard_size=4):
    parts = load_parts(cfg.model, unet=False)
    return build_cache(parts, cfg.model, cfg.data, shard_size=shard_size, batch_size=3), parts


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_cached_batch_equals_the_encoded_batch(tiny_models, pair_file, tmp_path, family):
    cfg = _cfg(tiny_models[family], pair_file, tmp_path)
    _, parts = _build(cfg)
    latents, text = find_cache(cfg.model, cfg.data)
    d = cfg.data
    pairs = PreferencePairs(d.path, d.split, d.resolution, False, d.random_flip, seed=0)
    cached = CachedPairs(pairs, latents, text)
    empty = text.conditioning([""])
    keys = [(3, i) for i in range(len(pairs))]  # epoch 3: some images flipped, some not
    live = encode_batch(parts, collate_items([pairs[k] for k in keys]), 0.5, BatchRandom(0, 5, len(keys)),
                        d.resolution, torch.device("cpu"))
    read = encode_batch(parts, cached.collate([cached[k] for k in keys]), 0.5, BatchRandom(0, 5, len(keys)),
                        d.resolution, torch.device("cpu"), empty=empty)
    for a, b in [(live.w.latents, read.w.latents), (live.l.latents, read.l.latents),
                 (live.w.cond.hidden_states, read.w.cond.hidden_states),
                 (live.l.cond.hidden_states, read.l.cond.hidden_states)]:
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    if family == "sdxl":
        torch.testing.assert_close(live.w.cond.pooled, read.w.cond.pooled, rtol=1e-4, atol=1e-5)
        assert torch.equal(live.w.time_ids, read.w.time_ids) and torch.equal(live.l.time_ids, read.l.time_ids)


@pytest.mark.slow
@pytest.mark.parametrize(("family", "objective"), [  # winners-only data on the richest conditioning (SDXL's)
    ("sd15", "dpo"), ("sd21-v", "dpo"), ("sdxl", "dpo"), ("sdxl", "sft"),
])
def test_training_with_and_without_cache_gives_the_same_losses(tiny_models, pair_file, tmp_path, capsys,
                                                               family, objective):
    losses = {}
    for mode in ("off", "require"):
        cfg = _cfg(tiny_models[family], pair_file, tmp_path, f"objective.name={objective}", f"data.cache={mode}",
                   f"train.output_dir={tmp_path / mode}")
        if mode == "require":
            _build(cfg)
        train(cfg)
        losses[mode] = [json.loads(line)["loss"] for line in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
    assert "no VAE or text encoder loaded" in capsys.readouterr().out
    assert len(losses["off"]) == 2 and all(math.isfinite(x) for x in losses["off"])
    assert losses["require"] == pytest.approx(losses["off"], rel=1e-4)


def test_build_resumes_and_inputs_pick_the_folder(tiny_models, pair_file, tmp_path):
    cfg = _cfg(tiny_models["sd15"], pair_file, tmp_path)
    with umask(0o022):
        (latent_dir, text_dir), _ = _build(cfg)
    shards = sorted(latent_dir.glob("shard-*.safetensors"))
    assert len(shards) == 4  # all 14 rows (ties too: AI feedback may decide them), in shards of 4
    assert {modes(latent_dir)[shard.name] for shard in shards} == {0o644}  # safetensors alone writes 0600
    reference = shards[1].read_bytes()
    shards[1].unlink()
    (latent_dir / "index.json").unlink()  # as if killed before the end
    assert find_cache(cfg.model, cfg.data) is None
    before = shards[0].stat().st_mtime_ns
    _build(cfg)
    assert shards[1].read_bytes() == reference and shards[0].stat().st_mtime_ns == before  # only the gap rebuilt
    assert find_cache(cfg.model, cfg.data) is not None

    other = _cfg(tiny_models["sd15"], pair_file, tmp_path, "data.resolution=16")
    assert cache_folders(other.model, other.data)[0] != latent_dir
    assert cache_folders(other.model, other.data)[1] == text_dir  # captions do not depend on resolution
    assert find_cache(other.model, other.data) is None
    with pytest.raises(FileNotFoundError, match="data.cache=require"):
        find_cache(other.model, _cfg(tiny_models["sd15"], pair_file, tmp_path, "data.resolution=16",
                                     "data.cache=require").data)
    with pytest.raises(ValueError, match="random_crop"):
        cache_folders(other.model, _cfg(tiny_models["sd15"], pair_file, tmp_path, "data.random_crop=true").data)

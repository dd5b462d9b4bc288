"""Winners-only data (methods that learn from the preferred images alone): the chosen images of a pair table,
a pairs file without rejected images, and an image folder with captions, read, streamed and cached alike."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from diffalign.config.core import load_config
from diffalign.config.schema import RunConfig
from diffalign.data.cache import CachedPairs, LatentCache, TextCache, build_cache
from diffalign.data.pairs import PreferencePairs, load_pair_table
from diffalign.data.streaming import StreamingPairs
from diffalign.models.loading import load_parts


@pytest.fixture(scope="module")
def sources(pair_file, winners_folder, tmp_path_factory):
    """The winners of `pair_file` as an image folder (metadata.jsonl) and as a pairs file without `rejected`."""
    file = tmp_path_factory.mktemp("winners-file") / "winners.jsonl"
    images = sorted((winners_folder / "images").iterdir())
    captions = [row["caption"] for row in map(json.loads, (winners_folder / "metadata.jsonl").read_text().splitlines())]
    file.write_text("".join(json.dumps({"prompt": c, "chosen": str(i)}) + "\n" for c, i in zip(captions, images)))
    return {"table": str(pair_file), "folder": str(winners_folder), "file": str(file)}


def _pixels(items):
    return [(item["fields"].caption, item["w"]["pixels"]) for item in items]


@pytest.mark.parametrize("kind", ["table", "folder", "file"])
def test_each_source_serves_the_winners_and_nothing_else(sources, pair_file, kind):
    pairs = PreferencePairs(str(pair_file), resolution=16)
    winners = PreferencePairs(sources[kind], resolution=16, winners_only=True)
    assert len(winners) == len(pairs) == 12
    items = [winners[(0, i)] for i in range(len(winners))]
    assert all("l" not in item for item in items)
    expected = _pixels(pairs[(0, i)] for i in range(len(pairs)))  # pairs of both labels: jpg_1 wins half of them
    for (caption, pixels), (want_caption, want) in zip(_pixels(items), expected):
        assert caption == want_caption and torch.equal(pixels, want)


@pytest.mark.parametrize("kind", ["table", "folder", "file"])
def test_each_source_streams_its_winners(sources, pair_file, kind):
    stream = iter(StreamingPairs(sources[kind], resolution=16, winners_only=True))
    items = [next(stream) for _ in range(12)]
    pairs = PreferencePairs(str(pair_file), resolution=16)
    assert all("l" not in item for item in items)
    for (caption, pixels), (want_caption, want) in zip(_pixels(items), _pixels(pairs[(0, i)] for i in range(12))):
        assert caption == want_caption and torch.equal(pixels, want)


def test_a_pairwise_method_refuses_an_image_folder_and_a_file_without_rejected(sources):
    with pytest.raises(ValueError, match="folder of images with captions.*seppo or sft"):
        load_pair_table(sources["folder"])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['rejected'\]"):
        load_pair_table(sources["file"])


def test_a_folder_image_without_a_caption_is_named(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    (tmp_path / "a.txt").write_text("a black square")
    with pytest.raises(ValueError, match=r"1 of 2 image\(s\) cannot be training winners:\n  .*b\.png: no prompt"):
        load_pair_table(str(tmp_path), winners_only=True)


def test_an_image_folder_caches_its_winners_only(tiny_models, sources, tmp_path):
    cfg = load_config(RunConfig, None, [
        f"model.pretrained={tiny_models['sd15']}", f"data.path={sources['folder']}", "data.resolution=16",
        f"data.cache_dir={tmp_path / 'cache'}", "data.random_flip=false"])
    parts = load_parts(cfg.model, unet=False)
    latent_dir, text_dir = build_cache(parts, cfg.model, cfg.data, shard_size=8, batch_size=4)
    latents = LatentCache(latent_dir)
    pairs = PreferencePairs(sources["folder"], resolution=16, winners_only=True)
    cached = CachedPairs(pairs, latents, TextCache(text_dir))
    item = cached[(0, 3)]
    assert "l" not in item and item["w"]["mean"].shape == (4, 4, 4)
    with pytest.raises(Exception, match="mean_1"):  # the folder has no second image to cache
        latents.get("mean_1", 0)

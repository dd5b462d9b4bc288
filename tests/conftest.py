"""Shared fixtures: tiny SD1.5-, SD2.1-v- and SDXL-shaped pipelines and a small Pick-a-Pic-schema table."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from diffalign.synthetic.domain import random_spec
from diffalign.synthetic.render import render

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "assets" / "tiny-sd"


@pytest.fixture(scope="session")
def clip_tokenizers():
    """The CLIP BPE tokenizer (eos padding) and its SDXL tokenizer_2 twin ('!' padding), built once."""
    from diffalign.models.tiny import clip_bpe_tokenizer

    return clip_bpe_tokenizer(), clip_bpe_tokenizer(pad_token="!")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, clip_tokenizers) -> dict[str, Path]:
    """Random-weight pipeline folders of each family: {'sd15': path, 'sd21-v': path, 'sdxl': path}."""
    from diffalign.models.tiny import save_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-models")
    tok, tok2 = clip_tokenizers
    return {
        family: save_tiny_pipeline(root / family, family, tokenizer=tok, tokenizer_2=tok2)
        for family in ("sd15", "sd21-v", "sdxl")
    }


@pytest.fixture(scope="session")
def lora_parts():
    """lora_parts(base, shift): the base's parts with a rank-4 LoRA on the UNet whose B weights are moved by
    `shift` (so the policy differs from its adapters-off reference)."""
    from diffalign.config.schema import LoraConfig, ModelConfig
    from diffalign.models.loading import load_parts
    from diffalign.models.lora import attach_lora

    def make(base: str | Path, shift: float = 0.0):
        parts = load_parts(ModelConfig(pretrained=str(base)))
        attach_lora(parts.unet, LoraConfig(rank=4, alpha=4))
        with torch.no_grad():
            for name, p in parts.unet.named_parameters():
                if "lora_B" in name:
                    p.add_(shift)
        return parts

    return make


@pytest.fixture(scope="session")
def make_lora():
    """make_lora(base, folder, shift): a rank-4 LoRA on the base's UNet with every weight moved by `shift`,
    saved in diffusers' format in `folder` (returned)."""
    from diffalign.config.schema import LoraConfig, ModelConfig
    from diffalign.models.loading import load_parts
    from diffalign.models.lora import attach_lora, save_lora

    def make(base: str | Path, folder: Path, shift: float = 0.1) -> Path:
        unet = load_parts(ModelConfig(pretrained=str(base))).unet
        with torch.no_grad():
            for p in attach_lora(unet, LoraConfig(rank=4, alpha=4)):
                p.add_(shift)
        save_lora(unet, folder, "sd")
        return folder

    return make


@pytest.fixture(scope="session")
def reader_overrides():
    """reader_overrides(reader, make_cfg, cache_dir): the overrides that make a run read its data as a decoded
    table, a stream or its latent cache; for "cache" the cache of the config `make_cfg(overrides)` is built first."""

    def make(reader: str, make_cfg, cache_dir: Path) -> list[str]:
        if reader == "table":
            return []
        if reader == "stream":
            return ["data.streaming=true"]
        from diffalign.data.cache import build_cache
        from diffalign.models.loading import load_parts

        extra = [f"data.cache_dir={cache_dir}", "data.cache=require"]
        cfg = make_cfg(extra)
        build_cache(load_parts(cfg.model, unet=False), cfg.model, cfg.data, shard_size=8, batch_size=4)
        return extra

    return make


def png_bytes(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_pairs(path: Path, n: int = 12, ties: int = 0, seed: int = 0) -> Path:
    """A Pick-a-Pic-schema parquet file of rendered shapes-world pairs (labels alternate sides)."""
    rng = random.Random(seed)
    rows = {"caption": [], "jpg_0": [], "jpg_1": [], "label_0": [], "label_1": []}
    for i in range(n + ties):
        spec = random_spec(rng)
        rows["caption"].append(spec.caption)
        rows["jpg_0"].append(png_bytes(render(spec, rng)[0]))
        rows["jpg_1"].append(png_bytes(render(spec, rng)[0]))
        label = 0.5 if i >= n else float(i % 2)
        rows["label_0"].append(label)
        rows["label_1"].append(1 - label)
    pq.write_table(pa.table(rows), path)
    return path


@pytest.fixture(scope="session")
def pair_file(tmp_path_factory) -> Path:
    """12 decided pairs and 2 ties in the Pick-a-Pic v2 schema."""
    return write_pairs(tmp_path_factory.mktemp("pairs") / "pairs.parquet", n=12, ties=2)


def pair_winners(path: Path) -> list[tuple[str, Image.Image]]:
    """(caption, preferred image) of every decided pair of a pair table, in table order."""
    table = pq.read_table(path).to_pylist()
    return [(row["caption"], Image.open(io.BytesIO(row["jpg_0" if row["label_0"] == 1 else "jpg_1"])))
            for row in table if row["label_0"] in (0, 1)]


@pytest.fixture(scope="session")
def winners_folder(pair_file, tmp_path_factory) -> Path:
    """The winners of `pair_file` as an image folder with captions (imagefolder `metadata.jsonl`)."""
    folder = tmp_path_factory.mktemp("winners") / "folder"
    (folder / "images").mkdir(parents=True)
    rows = []
    for i, (caption, image) in enumerate(pair_winners(pair_file)):
        image.save(folder / "images" / f"{i:03d}.png")
        rows.append(json.dumps({"file_name": f"images/{i:03d}.png", "caption": caption}) + "\n")
    (folder / "metadata.jsonl").write_text("".join(rows))
    return folder


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch):
    torch.set_num_threads(2)
    # train.cpu_threads=auto keeps these 2 whatever the load: a thread count changes float roundings
    monkeypatch.setattr("diffalign.threads.threads_at_start", lambda: 2)
    yield

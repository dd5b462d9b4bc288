"""The latent and text-embedding cache: VAE posteriors and text-encoder outputs computed once.

`build_cache(model_cfg, data_cfg)` (the `diffalign cache` command) writes two folders under
`data.cache_dir`, each named by a hash of everything its content depends on:

- `latents-<hash>/`: for every row of the pair table (ties included, so relabelling needs no new
  cache), the mean and std of the VAE posterior of `jpg_0` and `jpg_1` after resizing and centre
  cropping to `data.resolution`, and of their mirror images when `data.random_flip` is on, in the
  frozen dtype (what the VAE outputs: reading the cache is lossless), plus each image's original
  size and crop (SDXL's time ids). Depends on: model (VAE), revision, variant, VAE override, frozen
  dtype, resolution, flip, and the data (path, split, max_pairs, files' sizes and times).
- `text-<hash>/`: the text conditioning of every distinct caption (and of the empty caption used
  for caption dropout): SD's last hidden state, or SDXL's two penultimate states and pooled output.

Both are written in shards of `shard_size` rows, each shard atomically; an interrupted build resumes
at the first missing shard, and `index.json`, written last, marks a complete cache. A changed input
gives another hash, hence another folder: a cache is never silently reused for other inputs.
Tensors are read lazily from the shards (safetensors memory maps), so the cache may exceed RAM.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..config.schema import DataConfig, ModelConfig
from ..files import atomic_write_text, give_usual_permissions
from ..models.conditioning import TextConditioning, encode_prompts
from ..models.loading import DiffusionParts, resolve_source
from .order import derive_seed
from .pairs import PreferencePairs, decode_image, has_rejected, load_pair_table, source_key
from .record import DUAL_CAPTION_COLUMNS, WEIGHT_COLUMN, PairBatch, collate_items, pair_fields
from .transforms import prepare_image

CACHE_VERSION = 1
INDEX_FILE = "index.json"


def _digest(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _model_inputs(model: ModelConfig) -> dict:
    return {"model": resolve_source(model.pretrained), "revision": model.revision, "variant": model.variant,
            "frozen_dtype": model.frozen_dtype}


def latent_cache_inputs(model: ModelConfig, data: DataConfig) -> dict:
    """Everything the latent cache's content depends on."""
    if data.random_crop:
        raise ValueError(
            "data.random_crop=true cannot be cached (every epoch crops elsewhere): set data.random_crop=false "
            "to use the latent cache, or data.cache=off"
        )
    return {"version": CACHE_VERSION, "kind": "latents", **_model_inputs(model), "vae": model.vae,
            "resolution": data.resolution, "flip": data.random_flip,
            "data": source_key(data.path, data.split, data.max_pairs)}


def text_cache_inputs(model: ModelConfig, data: DataConfig) -> dict:
    """Everything the text cache's content depends on."""
    return {"version": CACHE_VERSION, "kind": "text", **_model_inputs(model),
            "data": source_key(data.path, data.split, data.max_pairs)}


def cache_folders(model: ModelConfig, data: DataConfig) -> tuple[Path, Path]:
    """The latent and text cache folders for this model and data."""
    root = Path(data.cache_dir)
    return (root / f"latents-{_digest(latent_cache_inputs(model, data))}",
            root / f"text-{_digest(text_cache_inputs(model, data))}")


def _shard_path(folder: Path, k: int) -> Path:
    return folder / f"shard-{k:05d}.safetensors"


def _save_shard(folder: Path, k: int, tensors: dict[str, torch.Tensor]) -> None:
    path = _shard_path(folder, k)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(tmp))
    give_usual_permissions(tmp)  # safetensors writes 0600 files
    os.replace(tmp, path)


class _Shards:
    """Lazy row access to the shards of a complete cache folder."""

    def __init__(self, folder: Path) -> None:
        index = folder / INDEX_FILE
        if not index.is_file():
            raise FileNotFoundError(f"{folder}: no {INDEX_FILE}, the cache is incomplete (run `diffalign cache` again)")
        self.folder = folder
        self.index = json.loads(index.read_text())
        self.shard_size = self.index["shard_size"]
        self._open: dict[int, Any] = {}

    def get(self, name: str, row: int) -> torch.Tensor:
        k, r = divmod(row, self.shard_size)
        if k not in self._open:
            self._open[k] = safe_open(str(_shard_path(self.folder, k)), framework="pt")
        return self._open[k].get_slice(name)[r : r + 1][0]

    def __getstate__(self) -> dict:  # DataLoader workers open their own handles
        return {**self.__dict__, "_open": {}}


class LatentCache(_Shards):
    """VAE posterior moments, sizes and crops of both images of every source row."""


class TextCache(_Shards):
    """Text conditioning by caption."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.rows = {caption: i for i, caption in enumerate(self.index["captions"])}

    def conditioning(self, captions: Sequence[str]) -> TextConditioning:
        """The cached conditioning of `captions` (each must have been cached)."""
        missing = [c for c in captions if c not in self.rows]
        if missing:
            raise KeyError(f"{self.folder}: caption {missing[0]!r} is not cached; rebuild with `diffalign cache`")
        hidden = torch.stack([self.get("hidden", self.rows[c]) for c in captions])
        pooled = torch.stack([self.get("pooled", self.rows[c]) for c in captions]) if self.index["pooled"] else None
        return TextConditioning(hidden, pooled)


class CachedPairs(torch.utils.data.Dataset):
    """The pairs of a `PreferencePairs` served from the cache: no image is decoded, no encoder runs.

    Flips are drawn exactly as `PreferencePairs` draws them for an `(epoch, index)` key, so a cached run
    sees the same images (as latents) as an uncached one.
    """

    def __init__(self, pairs: PreferencePairs, latents: LatentCache, text: TextCache) -> None:
        needed = max(pairs.source_rows) + 1
        if latents.index["rows"] < needed:
            raise ValueError(f"{latents.folder} holds {latents.index['rows']} rows, the data needs {needed}")
        columns = [c for c in ("caption", "label_0", *DUAL_CAPTION_COLUMNS, WEIGHT_COLUMN) if c in pairs.table.column_names]
        self.rows = pairs.table.select_columns(columns).to_list()  # the small columns, for `pair_fields`
        self.source_rows = pairs.source_rows
        self.flip = pairs.random_flip
        self.seed = pairs.seed
        self.latents, self.text = latents, text
        self.dropped = pairs.dropped
        self.winners_only = pairs.winners_only

    def __len__(self) -> int:
        return len(self.source_rows)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, index))
        row = self.source_rows[index]
        fields = pair_fields(self.rows[index])
        item: dict = {"fields": fields}
        for side, k in zip(("w", "l")[: 1 if self.winners_only else 2], fields.order):
            flipped = self.flip and float(torch.rand((), generator=generator)) < 0.5
            suffix = "_flip" if flipped else ""
            item[side] = {"mean": self.latents.get(f"mean_{k}{suffix}", row), "std": self.latents.get(f"std_{k}{suffix}", row),
                          "original_sizes": self.latents.get(f"size_{k}", row), "crops": self.latents.get(f"crop_{k}", row)}
        return item

    def collate(self, items: Sequence[dict]) -> PairBatch:
        """Stack items and look up the conditioning of their prompts (and of per-image captions that differ)."""
        batch = collate_items(items)
        batch.prompt_cond = self.text.conditioning(batch.captions)
        for side in (batch.w, batch.l):
            if side is not None and side.own_captions != batch.captions:
                side.own_cond = self.text.conditioning(side.own_captions)
        return batch


def find_cache(model: ModelConfig, data: DataConfig) -> tuple[LatentCache, TextCache] | None:
    """The complete caches for this model and data, or None if either is missing or incomplete."""
    if data.cache == "off" or (data.cache == "auto" and data.random_crop):
        return None
    latent_dir, text_dir = cache_folders(model, data)
    if (latent_dir / INDEX_FILE).is_file() and (text_dir / INDEX_FILE).is_file():
        return LatentCache(latent_dir), TextCache(text_dir)
    if data.cache == "require":
        raise FileNotFoundError(
            f"data.cache=require but the cache for this model and data is missing or incomplete "
            f"({latent_dir}, {text_dir}): run `diffalign cache` with the same config first"
        )
    return None


def _chunks(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(start + size, n))


@torch.no_grad()
def _build_latents(parts: DiffusionParts, data: DataConfig, folder: Path, rows: int, shard_size: int,
                   batch_size: int) -> None:
    table = load_pair_table(data.path, data.split, winners_only=True)
    sides = [0, 1] if has_rejected(table) else [0]  # an image folder or winners file: the preferred images only
    vae = parts.vae
    shards = list(_chunks(rows, shard_size))
    done = sum(_shard_path(folder, k).is_file() for k in range(len(shards)))
    bar = tqdm(total=rows, initial=sum(len(shards[k]) for k in range(done)), desc="latents", unit="row")
    for k, shard in enumerate(shards):
        if _shard_path(folder, k).is_file():
            continue
        out: dict[str, list[torch.Tensor]] = {}
        for chunk in _chunks(len(shard), batch_size):
            pixels: dict[str, list[torch.Tensor]] = {}
            for r in chunk:
                row = table[shard.start + r]
                for side in sides:
                    image = decode_image(row[f"jpg_{side}"], f"{data.path} row {shard.start + r} jpg_{side}")
                    prepared = prepare_image(image, data.resolution)
                    pixels.setdefault(f"{side}", []).append(prepared.pixels)
                    out.setdefault(f"size_{side}", []).append(torch.tensor(prepared.original_size))
                    out.setdefault(f"crop_{side}", []).append(torch.tensor(prepared.crop_top_left))
            for side in map(str, sides):
                batch = torch.stack(pixels[side])
                variants = [("", batch)] + ([("_flip", batch.flip(-1))] if data.random_flip else [])
                for suffix, images in variants:
                    posterior = vae.encode(images.to(vae.device, vae.dtype)).latent_dist
                    out.setdefault(f"mean_{side}{suffix}", []).append(posterior.mean.cpu())
                    out.setdefault(f"std_{side}{suffix}", []).append(posterior.std.cpu())
            bar.update(len(chunk))
        _save_shard(folder, k, {name: torch.cat(ts) if ts[0].dim() == 4 else torch.stack(ts) for name, ts in out.items()})
    bar.close()


@torch.no_grad()
def _build_text(parts: DiffusionParts, captions: list[str], folder: Path, shard_size: int, batch_size: int) -> None:
    shards = list(_chunks(len(captions), shard_size))
    bar = tqdm(total=len(captions), desc="captions", unit="caption")
    for k, shard in enumerate(shards):
        if _shard_path(folder, k).is_file():
            bar.update(len(shard))
            continue
        hidden, pooled = [], []
        for chunk in _chunks(len(shard), batch_size):
            cond = encode_prompts(parts, [captions[shard.start + i] for i in chunk])
            hidden.append(cond.hidden_states.cpu())
            if cond.pooled is not None:
                pooled.append(cond.pooled.cpu())
            bar.update(len(chunk))
        tensors = {"hidden": torch.cat(hidden)}
        if pooled:
            tensors["pooled"] = torch.cat(pooled)
        _save_shard(folder, k, tensors)
    bar.close()


def build_cache(parts: DiffusionParts, model: ModelConfig, data: DataConfig, shard_size: int = 1024,
                batch_size: int = 16) -> tuple[Path, Path]:
    """Compute (or finish computing) both caches for this model and data; return their folders."""
    latent_dir, text_dir = cache_folders(model, data)
    pairs = PreferencePairs(data.path, data.split, data.resolution, False, data.random_flip, data.max_pairs,
                            winners_only=True)  # any data a method reads; both images of a pair table are cached
    # every row, ties included (AI feedback may decide them); with max_pairs, up to the last pair used
    rows = len(pairs.source) if data.max_pairs is None else max(pairs.source_rows) + 1
    for folder, inputs in ((latent_dir, latent_cache_inputs(model, data)), (text_dir, text_cache_inputs(model, data))):
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "inputs.json", json.dumps(inputs, indent=2))
    if not (latent_dir / INDEX_FILE).is_file():
        _build_latents(parts, data, latent_dir, rows, shard_size, batch_size)
        atomic_write_text(latent_dir / INDEX_FILE, json.dumps(
            {**latent_cache_inputs(model, data), "rows": rows, "shard_size": shard_size}, indent=2))
    if not (text_dir / INDEX_FILE).is_file():
        columns = [c for c in ("caption", "caption_0", "caption_1") if c in pairs.source.column_names]
        seen = dict.fromkeys([""])
        for column in columns:
            seen.update(dict.fromkeys(c or "" for c in pairs.source.select_columns([column])[column][:rows]))
        captions = list(seen)
        _build_text(parts, captions, text_dir, shard_size, batch_size)
        atomic_write_text(text_dir / INDEX_FILE, json.dumps(
            {**text_cache_inputs(model, data), "captions": captions, "shard_size": shard_size,
             "pooled": parts.family == "sdxl"}))
    return latent_dir, text_dir

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

Both are written in shards of `shard_size` rows, each shard atomically, then a record of it (in the
folder's `.chunks/`, with the build's settings: shard size and batch size); an interrupted build resumes
at the shards without a record, and a resume with another shard or batch size is refused. `index.json`,
written last by the main process once every shard is there and fits (rows and tensors), marks a complete
cache. A changed input gives another hash, hence another folder: a cache is never silently reused for
other inputs.

Under `accelerate launch --num_processes N` (or torchrun, on one node or several) process r computes
shards r, r + N, ... of the latents, then of the captions (`diffalign.processes`); a shard is computed
exactly as one process computes it (batches from its first row), so the files of N processes are those
of one, and a build killed on N processes may resume on any number.
Tensors are read lazily from the shards (safetensors memory maps), so the cache may exceed RAM.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..config.commands import CacheOptions
from ..config.schema import DataConfig, ModelConfig
from ..files import atomic_write_text, give_usual_permissions
from ..models.conditioning import TextConditioning, encode_prompts
from ..models.loading import DiffusionParts, resolve_source
from ..processes import ChunkRecords, Processes, current_processes, fingerprint, job_progress, prepare_status
from .order import derive_seed
from .pairs import PreferencePairs, decode_image, has_rejected, load_pair_table, source_key
from .record import DUAL_CAPTION_COLUMNS, WEIGHT_COLUMN, PairBatch, collate_items, pair_fields
from .transforms import prepare_image

CACHE_VERSION = 1
INDEX_FILE = "index.json"
RECORDS_DIR = ".chunks"  # while a folder is built: a record per finished shard, and the build's settings
SETTINGS_FILE = "settings.json"


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


@dataclass
class _Phase:
    """One folder of the cache to fill: its shards (row ranges), the tensors each holds, the settings a resumed
    build must share, how one shard is computed and the index.json written once every shard is there."""

    name: str  # the progress bar's and the status files' name
    unit: str
    folder: Path
    shards: list[range]
    names: list[str]
    settings: dict
    compute: Callable[[range, Callable[[int], None]], dict[str, torch.Tensor]]  # (rows, count done) -> tensors
    index: Callable[[], str]

    def records(self) -> ChunkRecords:
        """The record of each shard written by this build (the settings and the folder make its fingerprint)."""
        return ChunkRecords(self.folder / RECORDS_DIR, fingerprint({"folder": self.folder.name, **self.settings}),
                            len(self.shards), lambda k: f"{self.name} {_shard_path(self.folder, k).name}")


def _latent_names(sides: list[int], flip: bool) -> list[str]:
    """The tensors of a latent shard: per side, sizes, crops and the posterior's moments (and their mirrors')."""
    suffixes = ["", "_flip"] if flip else [""]
    return [name for side in sides for name in (f"size_{side}", f"crop_{side}",
                                                *(f"{m}_{side}{s}" for s in suffixes for m in ("mean", "std")))]


def _latent_phase(parts: DiffusionParts, data: DataConfig, folder: Path, rows: int, settings: dict,
                  index: dict) -> _Phase:
    """The latent folder's phase: VAE posteriors, sizes and crops of the first `rows` rows' images."""
    table = load_pair_table(data.path, data.split, winners_only=True)
    sides = [0, 1] if has_rejected(table) else [0]  # an image folder or winners file: the preferred images only
    vae = parts.vae

    @torch.no_grad()
    def compute(shard: range, done: Callable[[int], None]) -> dict[str, torch.Tensor]:
        out: dict[str, list[torch.Tensor]] = {}
        # batches counted from the shard's first row: any process computes a shard as one process does
        for chunk in _chunks(len(shard), settings["batch_size"]):
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
            done(len(chunk))
        return {name: torch.cat(ts) if ts[0].dim() == 4 else torch.stack(ts) for name, ts in out.items()}

    return _Phase("latents", "row", folder, list(_chunks(rows, settings["shard_size"])),
                  _latent_names(sides, data.random_flip), settings, compute,
                  lambda: json.dumps({**index, "rows": rows, "shard_size": settings["shard_size"]}, indent=2))


def _text_phase(parts: DiffusionParts, captions: list[str], folder: Path, settings: dict, index: dict) -> _Phase:
    """The text folder's phase: the text encoders' conditioning of every caption, in `captions` order."""
    @torch.no_grad()
    def compute(shard: range, done: Callable[[int], None]) -> dict[str, torch.Tensor]:
        hidden, pooled = [], []
        for chunk in _chunks(len(shard), settings["batch_size"]):
            cond = encode_prompts(parts, [captions[shard.start + i] for i in chunk])
            hidden.append(cond.hidden_states.cpu())
            if cond.pooled is not None:
                pooled.append(cond.pooled.cpu())
            done(len(chunk))
        return {"hidden": torch.cat(hidden), **({"pooled": torch.cat(pooled)} if pooled else {})}

    sdxl = parts.family == "sdxl"
    return _Phase("captions", "caption", folder, list(_chunks(len(captions), settings["shard_size"])),
                  ["hidden", "pooled"] if sdxl else ["hidden"], settings, compute,
                  lambda: json.dumps({**index, "captions": captions, "shard_size": settings["shard_size"],
                                      "pooled": sdxl}))


def _cached_captions(pairs: PreferencePairs, rows: int) -> list[str]:
    """Every distinct caption of the first `rows` rows (prompts and per-image captions), after the empty one."""
    seen = dict.fromkeys([""])
    for column in [c for c in ("caption", "caption_0", "caption_1") if c in pairs.source.column_names]:
        seen.update(dict.fromkeys(c or "" for c in pairs.source.select_columns([column])[column][:rows]))
    return list(seen)


def _check_settings(folder: Path, settings: dict) -> None:
    """Refuse to resume the interrupted build of `folder` with other settings, naming what changed; otherwise
    record `settings` as this build's (until its index is written)."""
    path = folder / RECORDS_DIR / SETTINGS_FILE
    if not path.is_file():
        atomic_write_text(path, json.dumps(settings, indent=1))
        return
    try:
        old = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); delete {path.parent} to recompute the shards it "
                         "records") from None
    differing = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
    if differing:
        key = differing[0]
        also = f"; also {', '.join(differing[1:])}" if differing[1:] else ""
        same = " ".join(f"--{k.replace('_', '-')} {old[k]}" for k in ("shard_size", "batch_size") if k in old)
        raise ValueError(
            f"{folder} holds part of a cache built with other settings ({key}: {old.get(key)!r} there, "
            f"{settings.get(key)!r} now{also}): rerun with the same settings ({same}) to resume it, or delete "
            f"{folder} to start over"
        )


def _check_shard(folder: Path, k: int, rows: int, names: list[str]) -> None:
    """Raise a clear error unless shard `k` of `folder` holds `rows` rows of exactly the tensors `names`."""
    path = _shard_path(folder, k)
    redo = "delete it and rerun `diffalign cache` with the same config to recompute it"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: missing, though its chunk record says it was written (on several nodes data.cache_dir must be "
            "on a filesystem every node shares); rerun `diffalign cache` with the same config to recompute it"
        )
    try:
        with safe_open(str(path), framework="pt") as shard:
            shapes = {name: shard.get_slice(name).get_shape() for name in shard.keys()}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path}: not a readable safetensors shard ({error}); {redo}") from None
    lengths = sorted({shape[0] if shape else 0 for shape in shapes.values()})
    if sorted(shapes) != sorted(names) or lengths != [rows]:
        held = f"{'/'.join(map(str, lengths)) or 0} rows of {', '.join(sorted(shapes)) or 'no tensor'}"
        raise ValueError(f"{path} does not fit this cache: it holds {held}, where shard {k} of this cache holds "
                         f"{rows} rows of {', '.join(names)} (another cache's shard?); {redo}")


def _run_phase(phase: _Phase, processes: Processes, status: Path, done: set[int]) -> None:
    """Compute this process's share of the phase's shards not `done` (shard k on process k mod N), each written
    atomically before its record; once every process is done, the main process checks every shard and writes
    the folder's index.json."""
    records = phase.records()
    with job_progress(processes, status, phase.name, sum(map(len, phase.shards)),
                      sum(len(phase.shards[k]) for k in done), desc=phase.name, unit=phase.unit) as progress:
        for k in processes.share(len(phase.shards)):
            if k not in done:
                _save_shard(phase.folder, k, phase.compute(phase.shards[k], progress.update))
                records.write(k, {"rows": len(phase.shards[k])})
    if processes.is_main:
        records.read_all(processes)
        for k, shard in enumerate(phase.shards):
            _check_shard(phase.folder, k, len(shard), phase.names)
        atomic_write_text(phase.folder / INDEX_FILE, phase.index())
        records.clear()


def build_cache(parts: DiffusionParts, model: ModelConfig, data: DataConfig,
                shard_size: int = CacheOptions.shard_size, batch_size: int = CacheOptions.batch_size,
                processes: Processes | None = None) -> tuple[Path, Path]:
    """Compute (or finish computing) both caches for this model and data, this process taking its share of the
    shards (`processes`: the launch's, by default); return their folders, complete on every process."""
    for flag, value, what in (("--shard-size", shard_size, "rows per shard file"),
                              ("--batch-size", batch_size, "images or captions per encoder call")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{flag} {value}: give a whole number of at least 1 ({what})")
    processes = processes or current_processes()
    latent_dir, text_dir = cache_folders(model, data)
    pairs = PreferencePairs(data.path, data.split, data.resolution, False, data.random_flip, data.max_pairs,
                            winners_only=True)  # any data a method reads; both images of a pair table are cached
    # every row, ties included (AI feedback may decide them); with max_pairs, up to the last pair used
    rows = len(pairs.source) if data.max_pairs is None else max(pairs.source_rows) + 1
    inputs = {latent_dir: latent_cache_inputs(model, data), text_dir: text_cache_inputs(model, data)}
    build = {"shard_size": shard_size, "batch_size": batch_size}
    phases = []
    if not (latent_dir / INDEX_FILE).is_file():
        phases.append(_latent_phase(parts, data, latent_dir, rows, {**build, "rows": rows}, inputs[latent_dir]))
    if not (text_dir / INDEX_FILE).is_file():
        captions = _cached_captions(pairs, rows)
        phases.append(_text_phase(parts, captions, text_dir, {**build, "captions": len(captions)}, inputs[text_dir]))
    if processes.is_main:
        for folder in (latent_dir, text_dir):
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder / "inputs.json", json.dumps(inputs[folder], indent=2))
            if (folder / INDEX_FILE).is_file():
                shutil.rmtree(folder / RECORDS_DIR, ignore_errors=True)  # a build killed once its index was written
        for phase in phases:
            _check_settings(phase.folder, phase.settings)
    # the shards done, read before the others start: none is recorded meanwhile, so the bar counts each once
    done = [{k for k in phase.records().done() if _shard_path(phase.folder, k).is_file()} for phase in phases]
    prepare_status(processes, latent_dir)
    for phase, finished in zip(phases, done):
        _run_phase(phase, processes, latent_dir, finished)
    processes.wait()  # every process returns with both indexes written
    return latent_dir, text_dir

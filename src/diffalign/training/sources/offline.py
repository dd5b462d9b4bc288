"""Offline preference pairs as a batch source: a pair table (decoded and encoded every step), its latent
cache, or a stream, in the data order of `data.order`, encoded for the method at each micro-step."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ...config.schema import RunConfig
from ...data.cache import CachedPairs, LatentCache, TextCache
from ...data.filters import PairFilter
from ...data.order import EpochBatches
from ...data.pairs import PreferencePairs
from ...data.record import PairBatch, collate_items
from ...data.relabel import make_relabeller
from ...data.skip_report import SKIP_FILE, SkipReport, read_skipped
from ...data.streaming import StreamingPairs
from ...models.loading import DiffusionParts
from ..encode import encode_batch
from ..randomness import BatchRandom
from .base import BatchSource, SourceContext


def filter_options(cfg: RunConfig) -> dict:
    """The `PairFilter` keyword arguments of `cfg.data`."""
    d = cfg.data
    return dict(require_different=d.require_different, dedupe=d.dedupe,
                validation_fraction=d.validation_fraction, subset=d.subset)


def build_dataset(
    cfg: RunConfig,
    device: torch.device | None = None,
    *,
    rank: int = 0,
    world: int = 1,
    skip_report: str | Path | None = None,
    winners_only: bool = False,
    method: Any = None,
) -> PreferencePairs | StreamingPairs:
    """The filtered pairs of `cfg.data` (a table, or with `data.streaming` this process's stream), relabelled
    by `data.relabel_with` (AI feedback) if set; undecodable pairs are listed in `skip_report`.
    `winners_only`: only the preferred images are read (a method declaring `data = "winners"`); `method`'s
    `transform_table`/`transform_row` see the table (or each streamed row) before the filters; a method with
    `per_image_captions` (DCPO) requires the caption_0/caption_1 columns, as `data.dual_captions` does."""
    d = cfg.data
    report = SkipReport(skip_report)
    dual_captions = d.dual_captions or bool(getattr(method, "per_image_captions", False))
    if d.streaming:
        if d.relabel_with:
            raise ValueError("data.relabel_with needs the whole table (scores are cached by row): set data.streaming=false")
        if d.num_workers:
            raise ValueError("data.streaming reads in the training process: set data.num_workers=0")
        return StreamingPairs(
            d.path, d.split, d.resolution, d.random_crop, d.random_flip, d.max_pairs, seed=cfg.train.seed,
            filter_options=filter_options(cfg), skip_report=report, dual_captions=dual_captions,
            shuffle_buffer=d.shuffle_buffer, rank=rank, world=world, winners_only=winners_only,
            row_transform=None if method is None else method.transform_row,
        )
    relabel = None
    if d.relabel_with:
        relabel = make_relabeller(d.relabel_with, d.relabel_tie_tolerance, d.cache_dir, device=device)
    return PreferencePairs(
        d.path, d.split, d.resolution, d.random_crop, d.random_flip, d.max_pairs, seed=cfg.train.seed, relabel=relabel,
        pair_filter=PairFilter(**filter_options(cfg)), skip_report=report, dual_captions=dual_captions,
        winners_only=winners_only, transform=None if method is None else partial(method.transform_table, run=cfg),
    )


def build_loader(
    cfg: RunConfig, dataset: PreferencePairs | CachedPairs | StreamingPairs, rank: int = 0, world: int = 1,
    start: int = 0,
) -> torch.utils.data.DataLoader:
    """This process's endless stream of batches from global micro-step `start` on (see `data.order`; a
    stream skips the `start * batch_size` pairs this process consumed)."""
    if isinstance(dataset, StreamingPairs):
        dataset.start = start * cfg.train.batch_size
        return torch.utils.data.DataLoader(dataset, batch_size=cfg.train.batch_size, collate_fn=collate_items)
    sampler = EpochBatches(len(dataset), cfg.train.batch_size, cfg.train.seed, rank, world, start)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=dataset.collate if isinstance(dataset, CachedPairs) else collate_items,
        num_workers=cfg.data.num_workers,
        generator=torch.Generator().manual_seed(cfg.train.seed),  # worker seeds: leaves the global RNG alone
    )


class OfflinePairs(BatchSource):
    """The pairs of `cfg.data`, from the latent cache when `cache` is given, encoded for the method.

    Its position is the global micro-step alone (the data order is a function of it), so it saves nothing.
    """

    winners_only: bool = False  # read only the preferred image of each pair (`OfflineWinners`)

    @classmethod
    def build(cls, context: SourceContext) -> OfflinePairs:
        """The pairs of the run's data for this process; undecodable ones are listed in OUTPUT_DIR/skipped_pairs
        (emptied by a new run, kept by a resumed one). AI-feedback scores are computed by the main process
        first, then read by the others."""
        c = context
        skip_path = c.out_dir / SKIP_FILE
        with c.main_process_first():
            if c.rank == 0 and not c.resuming:
                skip_path.unlink(missing_ok=True)
            pairs = build_dataset(c.cfg, c.device, rank=c.rank, world=c.world, skip_report=skip_path,
                                  winners_only=cls.winners_only, method=c.method)
        return cls(c.cfg, c.parts, pairs, c.cache, c.method.per_image_captions, c.device, c.rank, c.world, skip_path)

    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        """Refuse data.cache=require with a stream (the cache is indexed by the rows of a downloaded table), and
        the online rounds' settings (`BatchSource.check`)."""
        super().check(cfg)
        if cfg.data.streaming and cfg.data.cache == "require":
            raise ValueError(
                "data.cache=require cannot apply to data.streaming=true (the latent cache is indexed by the rows of a "
                "downloaded table): set data.cache=auto (encode on the fly) or data.streaming=false"
            )

    @classmethod
    def reads_latent_cache(cls, cfg: RunConfig) -> bool:
        """A table can be read from its latent cache; a stream cannot."""
        return not cfg.data.streaming

    @classmethod
    def replayable(cls, cfg: RunConfig) -> bool:
        """A table's order is a function of the micro-step; a stream's is not replayed."""
        return not cfg.data.streaming

    def __init__(
        self, cfg: RunConfig, parts: DiffusionParts, pairs: PreferencePairs | StreamingPairs,
        cache: tuple[LatentCache, TextCache] | None, per_image_captions: bool, device: torch.device,
        rank: int = 0, world: int = 1, skip_path: Path | None = None,
    ) -> None:
        self.cfg, self.parts, self.pairs, self.device = cfg, parts, pairs, device
        self.rank, self.world, self.skip_path = rank, world, skip_path
        self.per_image_captions = per_image_captions
        self.cache = cache
        self.dataset = pairs if cache is None else CachedPairs(pairs, *cache)  # type: ignore[arg-type]
        self.empty = None if cache is None else cache[1].conditioning([""])

    def describe(self) -> str:
        d = self.cfg.data
        if isinstance(self.pairs, StreamingPairs):
            described = "streamed, filters applied on the fly (counts at the end)"
        else:
            described = f"{len(self.dataset)} decided pairs ({self.pairs.report.describe()})"
        text = f"data {d.path}: {described}"
        if self.cache is not None:
            text += (f"\nlatent and text cache: {self.cache[0].folder}, {self.cache[1].folder} "
                     "(no VAE or text encoder loaded)")
        return text

    def batches(self, micro: int) -> Iterator[PairBatch]:
        return iter(build_loader(self.cfg, self.dataset, self.rank, self.world, start=micro))

    def prepare(self, raw: PairBatch, rand: BatchRandom) -> PairBatch:
        d = self.cfg.data
        return encode_batch(self.parts, raw, d.empty_prompt_prob, rand, d.resolution, self.device, empty=self.empty,
                            per_image_captions=self.per_image_captions)

    def summary(self) -> str | None:
        lines = []
        if isinstance(self.pairs, StreamingPairs):
            lines.append(f"streamed data, epoch {self.pairs.epoch} so far on this process: {self.pairs.report.describe()}")
        skipped = read_skipped(self.skip_path) if self.skip_path is not None else []
        if skipped:
            lines.append(f"{len(skipped)} pair(s) skipped for undecodable images, listed in {self.skip_path}")
        return "\n".join(lines) or None


class OfflineWinners(OfflinePairs):
    """The preferred image of each pair of `cfg.data` only (`batch.l` None): the data may also be an image
    folder with captions, or a pairs file without rejected images."""

    winners_only = True

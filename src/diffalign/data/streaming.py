"""Preference pairs read as a stream (`data.streaming`): training starts before the data is downloaded.

`StreamingPairs` wraps `datasets.load_dataset(..., streaming=True)` (hub ids, local parquet, JSONL/CSV
pairs) as an endless torch `IterableDataset` of prepared pairs, epoch after epoch:

- order: the file order, or with `shuffle_buffer` > 0 datasets' shard shuffle plus a shuffle buffer
  seeded by `seed` and re-seeded per epoch (`set_epoch`): the same for the same seed;
- processes: each takes its own part of the stream (`datasets.distributed.split_dataset_by_node`);
- filters (`PairFilter`, a fresh one per epoch) apply on the fly; with dedupe a process only sees
  duplicates within its own part; `max_pairs` caps each process's pairs per epoch at max_pairs // world;
- an undecodable pair is reported (`SkipReport`) and the stream goes on to the next one, so a batch
  keeps its size; its row id is its position in this process's epoch stream (the source row when
  neither shuffling nor several processes reorder the stream) and `ranking_id` if present;
- resume: the stream restarts and skips the `start` pairs this process already consumed (decoding
  them to skip exactly the same bad rows), so a resumed run sees the same pairs as an uninterrupted one.
  Skipping re-reads the consumed part of the stream. datasets' own `state_dict()` is not used: it
  loses the shuffle buffer, so it would not resume exactly.

The stream is read in the training process (`data.num_workers` must be 0): splitting an ordered
stream over workers would need every worker to decode every row to agree on the positions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import datasets
import torch
from datasets.distributed import split_dataset_by_node

from ..paths import resolve_local
from .filters import PairFilter
from .hub_datasets import read_hub_dataset
from .local_pairs import local_pairs_file
from .order import derive_seed
from .pairs import check_columns, decode_image, image_item, is_image_source, load_pair_table, parquet_files
from .parquet_shards import readable_parquet_files
from .record import DUAL_CAPTION_COLUMNS, PairFields, pair_fields
from .skip_report import SkipReport


def open_stream(path: str, split: str = "train", *, winners_only: bool = False) -> datasets.IterableDataset:
    """A streaming view of a hub dataset, local parquet file/folder/glob or JSONL/CSV pairs file (with
    `winners_only`, also an image folder with captions: see `pairs.load_pair_table`)."""
    local = resolve_local(path)
    pairs_file = local_pairs_file(path) if local is not None else None
    if pairs_file is not None or (local is not None and is_image_source(local)):
        return load_pair_table(path, split, winners_only=winners_only).to_iterable_dataset()
    files = parquet_files(path)
    if files is not None:
        return datasets.load_dataset("parquet", data_files=readable_parquet_files(files, path), split="train",
                                     streaming=True)
    if path.startswith((".", "/", "~")):
        raise FileNotFoundError(f"data.path {path!r} not found")
    return read_hub_dataset(path, lambda: datasets.load_dataset(path, split=split, streaming=True))


class StreamingPairs(torch.utils.data.IterableDataset):
    """An endless stream of this process's prepared pairs (the items of `PreferencePairs`), from `start` on."""

    def __init__(
        self,
        path: str,
        split: str = "train",
        resolution: int = 512,
        random_crop: bool = False,
        random_flip: bool = False,
        max_pairs: int | None = None,
        seed: int = 0,
        *,
        filter_options: dict[str, Any] | None = None,
        skip_report: SkipReport | None = None,
        dual_captions: bool = False,
        winners_only: bool = False,
        row_transform: Callable[[dict], dict] | None = None,
        shuffle_buffer: int = 0,
        rank: int = 0,
        world: int = 1,
        start: int = 0,
    ) -> None:
        self.path, self.split = path, split
        self.resolution, self.random_crop, self.random_flip = resolution, random_crop, random_flip
        self.max_pairs = None if max_pairs is None else max(1, max_pairs // world)
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        self.rank, self.world, self.start = rank, world, start
        self.filter_options = dict(filter_options or {})
        self.skip_report = skip_report or SkipReport(None)
        self.extra_columns = DUAL_CAPTION_COLUMNS if dual_captions else ()
        self.winners_only = winners_only
        self.row_transform = row_transform
        self.stream = open_stream(path, split, winners_only=winners_only)
        columns = self.stream.column_names or list(next(iter(self.stream)).keys())
        check_columns(path, columns, self.extra_columns, winners_only=winners_only)
        self.filter = PairFilter(**self.filter_options)
        self.report = self.filter.report  # the current epoch's counts
        self.epoch = 0

    def epoch_stream(self, epoch: int) -> datasets.IterableDataset:
        """This process's raw rows of epoch `epoch`, in their (seeded) order."""
        stream = self.stream
        if self.shuffle_buffer > 0:
            stream = stream.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
            stream.set_epoch(epoch)
        if self.world > 1:
            stream = split_dataset_by_node(stream, rank=self.rank, world_size=self.world)
        return stream

    def rows(self, epoch: int) -> Iterator[tuple[int, dict]]:
        """(position in this process's epoch stream, row) of the rows the filters keep, up to max_pairs."""
        self.filter = PairFilter(**self.filter_options)
        self.report = self.filter.report
        kept = 0
        for position, row in enumerate(self.epoch_stream(epoch)):
            if self.max_pairs is not None and kept >= self.max_pairs:
                return
            if self.row_transform is not None:
                row = self.row_transform(row)
            if self.filter.reason(row) is None:
                kept += 1
                yield position, row

    def _decode(self, position: int, row: dict, fields: PairFields) -> list | None:
        images = []
        for k in fields.order[: 1 if self.winners_only else 2]:
            try:
                images.append(decode_image(row.get(f"jpg_{k}"), f"{self.path} stream row {position} jpg_{k}"))
            except ValueError as error:
                self.skip_report.record(position, f"jpg_{k}", str(error), row.get("ranking_id"))
                return None
        return images

    def __iter__(self) -> Iterator[dict]:
        if torch.utils.data.get_worker_info() is not None:
            raise ValueError("data.streaming reads in the training process: set data.num_workers=0")
        served, epoch = 0, 0
        while True:
            self.epoch = epoch
            good = 0
            for position, row in self.rows(epoch):
                fields = pair_fields(row)
                images = self._decode(position, row, fields)
                if images is None:
                    continue
                good += 1
                served += 1
                if served <= self.start:
                    continue
                generator = torch.Generator().manual_seed(derive_seed(self.seed, self.world, self.rank, served))
                yield image_item(fields, images, self.resolution, self.random_crop, self.random_flip, generator)
            if good == 0 and self.report.kept == 0:
                raise ValueError(f"{self.path}: no pairs to train on: {self.filter.explain_empty()}")
            if good == 0:
                raise ValueError(f"{self.path}: no decodable pairs left after filtering ({self.report.describe()})")
            epoch += 1

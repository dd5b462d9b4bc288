"""Preference pairs in the Pick-a-Pic v2 schema, from local parquet files or the hub, as torch datasets.

Schema (https://huggingface.co/datasets/yuvalkirstain/pickapic_v2): `caption`, `jpg_0`, `jpg_1`
(encoded image bytes: JPEG or PNG), `label_0`, `label_1` (1/0 for a decided pair, 0.5/0.5 for a tie).
Ties are dropped, as in Diffusion-DPO (other filters: `data.filters`); the preferred image becomes
the pair's winner. A pair whose image will not decode is skipped and reported, not fatal.
"""

from __future__ import annotations

import functools
import glob
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import datasets
import torch
from PIL import Image

from ..files import atomic_write
from ..paths import resolve_local
from .filters import PairFilter
from .hub_datasets import read_hub_dataset
from .local_pairs import load_local_pairs, local_pairs_file
from .order import derive_seed
from .parquet_shards import readable_parquet_files
from .record import DUAL_CAPTION_COLUMNS, PairFields, pair_fields
from .skip_report import SkipReport
from .transforms import prepare_image

REQUIRED_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0")
WINNER_COLUMNS = ("caption", "jpg_0", "label_0")  # winners-only data: jpg_1 is read only for rows that jpg_1 won
METADATA_NAMES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")  # Hugging Face imagefolder convention


def parquet_files(path: str) -> list[str] | None:
    """The parquet files a local file, folder (searched recursively) or glob names; None if it is not local."""
    if any(ch in path for ch in "*?["):
        files = sorted(glob.glob(path, recursive=True))
        if not files:
            raise FileNotFoundError(f"no files match {path!r}")
        return files
    local = resolve_local(path)
    if local is None:
        return None
    if local.is_dir():
        files = sorted(str(p) for p in local.rglob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"no .parquet files in folder {local}")
        return files
    return [str(local)]


def load_pair_table(
    path: str, split: str = "train", *, extra_columns: Sequence[str] = (), winners_only: bool = False
) -> datasets.Dataset:
    """Load a Pick-a-Pic-schema table (local parquet, a JSONL/CSV pairs file, or a hub id) and check that
    it has `REQUIRED_COLUMNS` and `extra_columns` (e.g. Pick-Double-Caption's caption_0, caption_1).

    `winners_only` (methods that read only the preferred image) also accepts an image folder or metadata
    file with captions (`image_inputs.winners_folder_table`) and a pairs file without `rejected`, and
    requires only `WINNER_COLUMNS`."""
    local = resolve_local(path)
    image_source = local is not None and is_image_source(local)  # before pairs files: metadata.jsonl is not one
    pairs_file = local_pairs_file(path) if local is not None and not image_source else None
    if pairs_file is not None:
        table = load_local_pairs(pairs_file, winners_only=winners_only)
    elif image_source:
        if not winners_only:
            raise ValueError(
                f"data.path {path!r} is a folder of images with captions: it holds no rejected images, so it can "
                f"only train methods that learn from the preferred images alone (objective.name=seppo or sft); "
                f"a pairwise method needs a pair table (Pick-a-Pic schema or a pairs.jsonl)"
            )
        from .image_inputs import winners_folder_table  # it imports this module

        table = winners_folder_table(local)
    elif (files := parquet_files(path)) is not None:
        table = load_parquet_table(path, files)
    elif path.startswith((".", "/", "~")) or Path(path).suffix:
        raise FileNotFoundError(f"data.path {path!r} not found")
    else:
        table = read_hub_dataset(path, lambda: datasets.load_dataset(path, split=split))
    check_columns(path, table.column_names, extra_columns, winners_only=winners_only)
    return table


def load_parquet_table(path: str, files: Sequence[str]) -> datasets.Dataset:
    """The rows of the parquet `files` of data path `path` as one table (files without rows left out);
    a ValueError names a file that is not parquet, or `path` when no file holds a row or a file's data is corrupt."""
    try:
        return datasets.load_dataset("parquet", data_files=readable_parquet_files(files, path), split="train")
    except datasets.exceptions.DatasetGenerationError as error:
        if isinstance(error.__cause__, ValueError):  # pyarrow's ArrowInvalid: damaged data behind a valid footer
            raise ValueError(f"{path}: cannot read its parquet data ({error.__cause__})") from error
        raise


def has_rejected(table: datasets.Dataset) -> bool:
    """Whether a table holds rejected images (a `jpg_1` column, non-empty in its first row), unlike the
    winners-only tables of an image folder or a pairs file without `rejected`."""
    return "jpg_1" in table.column_names and len(table) > 0 and bool(table.select_columns(["jpg_1"])[0]["jpg_1"])


def is_image_source(path: Path) -> bool:
    """Whether a local path is an image folder (images or imagefolder metadata files, no pairs file) or a
    metadata file (`metadata.jsonl`/`.csv`/`.parquet`), rather than a pair table."""
    if path.is_file():
        return path.name in METADATA_NAMES
    if not path.is_dir() or local_pairs_file(path) is not None:
        return False
    images = image_suffixes()
    return any(p.name in METADATA_NAMES or p.suffix.lower() in images for p in path.rglob("*") if p.is_file())


@functools.lru_cache(maxsize=1)
def image_suffixes() -> frozenset[str]:
    """File extensions (lower case, with the dot) that Pillow can open here."""
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def check_columns(
    path: str, found: Sequence[str], extra_columns: Sequence[str] = (), *, winners_only: bool = False
) -> None:
    """Raise a ValueError naming the missing, expected and found columns unless `found` has them all."""
    required = WINNER_COLUMNS if winners_only else REQUIRED_COLUMNS
    expected = [*required, *extra_columns]
    missing = [c for c in expected if c not in found]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; expected the Pick-a-Pic v2 schema {list(required)} "
            f"{'' if winners_only else '(+ label_1)'}{' and ' + str(list(extra_columns)) if extra_columns else ''}, "
            f"found {list(found)}"
            + ("; `diffalign captions` writes caption_0/caption_1 (a caption per image)"
               if "caption_0" in missing or "caption_1" in missing else "")
        )


def decided_rows(table: datasets.Dataset) -> list[int]:
    """Indices of the rows with a decided label (label_0 in {0, 1})."""
    return [i for i, label in enumerate(table["label_0"]) if label in (0, 1, 0.0, 1.0)]


def decided_pairs(table: datasets.Dataset) -> tuple[datasets.Dataset, int]:
    """Rows with a decided label (label_0 in {0, 1}); also return how many ties/undecided were dropped."""
    keep = decided_rows(table)
    return table.select(keep), len(table) - len(keep)


def decode_image(data: bytes | dict, where: str) -> Image.Image:
    """Decode encoded image bytes (or a datasets Image dict); a clear error names the row and column."""
    if isinstance(data, dict):  # a datasets Image value: its bytes, or the file it names
        if data.get("bytes") is None and data.get("path"):
            try:
                data = Path(data["path"]).read_bytes()
            except OSError as error:
                raise ValueError(f"{where}: cannot read {data['path']} ({error})") from error
        else:
            data = data.get("bytes")  # type: ignore[assignment]
    if data is None:
        raise ValueError(f"{where}: no image")
    try:
        image = Image.open(io.BytesIO(data))  # type: ignore[arg-type]
        image.load()
        return image
    except Image.UnidentifiedImageError as error:  # its message names the buffer's address: not the same twice
        raise ValueError(f"{where}: cannot decode image bytes (not an image format PIL can identify)") from error
    except Exception as error:  # PIL raises several types for corrupt data
        raise ValueError(f"{where}: cannot decode image bytes ({error})") from error


def source_key(path: str, split: str, max_pairs: int | None) -> str:
    """A string identifying a pair table's content: path, split, max_pairs and, for local parquet
    files, each file's size and modification time (so a rewritten file gets a new key)."""
    parts = [f"path={path}", f"split={split}", f"max_pairs={max_pairs}"]
    try:
        files = parquet_files(path)
    except FileNotFoundError:
        files = None
    local = resolve_local(path)
    if not files and local is not None and is_image_source(local):  # an image folder: every file it holds
        files = sorted(str(p) for p in (local.rglob("*") if local.is_dir() else [local]) if p.is_file())
    for file in files or ():
        info = os.stat(file)
        parts.append(f"{os.path.abspath(file)}:{info.st_size}:{info.st_mtime_ns}")
    return "|".join(parts)




def filter_rows(table: datasets.Dataset, pair_filter: PairFilter, batch_size: int = 1024) -> list[int]:
    """Indices of the rows of `table` that `pair_filter` keeps, in order (its report counts the rest)."""
    columns = [c for c in ("caption", "label_0", "are_different") if c in table.column_names]
    if pair_filter.needs_images:
        columns += [c for c in ("jpg_0", "jpg_1") if c in table.column_names]
    keep: list[int] = []
    offset = 0
    for chunk in table.select_columns(columns).iter(batch_size=batch_size):
        n = len(chunk["label_0"])
        for i in range(n):
            if pair_filter.reason({c: chunk[c][i] for c in columns}) is None:
                keep.append(offset + i)
        offset += n
    return keep


class PreferencePairs(torch.utils.data.Dataset):
    """Decided pairs of a Pick-a-Pic-schema table, winner first, preprocessed for training.

    `relabel(table, source_key)`, if given (see `diffalign.data.relabel.make_relabeller`), re-decides
    the labels before ties are dropped, so a scorer can decide source ties and its own ties are
    dropped (counted in `dropped`). With `max_pairs`, only the first `max_pairs` rows are relabelled,
    so there may be fewer pairs than `max_pairs` once the scorer's ties are dropped.

    `pair_filter` (default: ties and invalid labels only) decides which rows are pairs; its counts are
    in `report`. A pair whose image does not decode is recorded in `skip_report` (a `SkipReport` or a
    file path) and replaced by the next decodable pair in table order (wrapping around): a batch keeps
    its size, and the replacement is a function of the key, so workers and resumed runs agree.
    `dual_captions` requires Pick-Double-Caption's caption_0/caption_1 columns. `winners_only` reads and
    serves only the preferred image of each pair (items without "l"), so the data may be an image folder
    with captions or a pairs file without rejected images (see `load_pair_table`).
    """

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
        relabel: Callable[[datasets.Dataset, str], datasets.Dataset] | None = None,
        transform: Callable[[datasets.Dataset], datasets.Dataset] | None = None,
        pair_filter: PairFilter | None = None,
        skip_report: SkipReport | str | Path | None = None,
        dual_captions: bool = False,
        winners_only: bool = False,
    ) -> None:
        self.path = path
        self.winners_only = winners_only
        table = load_pair_table(path, split, extra_columns=DUAL_CAPTION_COLUMNS if dual_captions else (),
                                winners_only=winners_only)
        if relabel is not None:
            if not has_rejected(table):
                raise ValueError(f"{path}: data.relabel_with re-decides pairs, but this data holds one image per row")
            if max_pairs is not None:
                table = table.select(range(min(max_pairs, len(table))))
            table = relabel(table, source_key(path, split, max_pairs))
        if transform is not None:  # a method's own use of the table (SmPO: labels and weights from scores)
            table = transform(table)
        self.filter = pair_filter or PairFilter()
        keep = filter_rows(table, self.filter)
        self.report = self.filter.report
        self.dropped = self.report.total_dropped
        if not keep:
            relabelled = (" (data.relabel_with decided the ties; see data.relabel_tie_tolerance)"
                          if relabel is not None and self.report.dropped.get("tie") else "")
            raise ValueError(f"{path}: no pairs to train on: {self.filter.explain_empty()}{relabelled}")
        truncated = max_pairs is not None and len(keep) > max_pairs
        if max_pairs is not None:
            keep = keep[:max_pairs]
        self.source = table  # every row, ties included (the latent cache is indexed by these rows)
        self.source_rows = keep
        self.table = table.select(keep)
        if truncated:
            self.report.recount_captions(self.table["caption"])
        self.skip_report = skip_report if isinstance(skip_report, SkipReport) else SkipReport(skip_report)
        self.resolution = resolution
        self.random_crop = random_crop
        self.random_flip = random_flip
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """The pair at `index`, winner first; with an `(epoch, index)` key (see `data.order`), crop and
        flip are drawn from a generator seeded by (seed, epoch, index), so any worker or resumed run
        prepares the same pixels. An undecodable pair is reported and the next one served instead."""
        epoch, index = key if isinstance(key, tuple) else (None, key)
        generator = self.generator if epoch is None else torch.Generator().manual_seed(derive_seed(self.seed, epoch, index))
        first_error = ""
        for offset in range(len(self)):
            position = (index + offset) % len(self)
            item, error = self._item(position, generator)
            if item is not None:
                return item
            first_error = first_error or error
        needed = "a decodable preferred image" if self.winners_only else "two decodable images"
        raise ValueError(f"{self.path}: no pair has {needed}; first error: {first_error}")

    def _item(self, position: int, generator: torch.Generator) -> tuple[dict | None, str]:
        row = self.table[position]
        source_row = self.source_rows[position]
        fields = pair_fields(row)
        images = []
        for k in fields.order[: 1 if self.winners_only else 2]:
            url = row.get(f"image_{k}_url")
            where = f"{self.path} row {source_row} jpg_{k}" + (f" ({url})" if url else "")
            try:
                images.append(decode_image(row.get(f"jpg_{k}"), where))
            except ValueError as error:
                self.skip_report.record(source_row, f"jpg_{k}", str(error), row.get("ranking_id"))
                return None, str(error)
        return image_item(fields, images, self.resolution, self.random_crop, self.random_flip, generator), ""


def image_item(fields: PairFields, images: Sequence[Image.Image], resolution: int, random_crop: bool,
               random_flip: bool, generator: torch.Generator) -> dict:
    """A reader item (see `record.collate_items`) of a pair's decoded images (winner first), prepared for training."""
    item: dict = {"fields": fields}
    for side, image in zip(("w", "l"), images):
        prepared = prepare_image(image, resolution, random_crop, random_flip, generator)
        item[side] = {"pixels": prepared.pixels, "original_sizes": prepared.original_size,
                      "crops": prepared.crop_top_left}
    return item


def encode_png(image) -> bytes:
    """PNG bytes of a uint8 (H, W, 3) array or a PIL image."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_pair_table(path: str | Path, rows: dict[str, list]) -> Path:
    """Write pairs as parquet in the Pick-a-Pic v2 schema; `rows` maps column names to equal-length lists.

    Image columns (`jpg_0`, `jpg_1`) may hold arrays or PIL images (stored as PNG bytes) or bytes.
    Extra columns (scores, seeds, models...) are kept as they are.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    missing = [c for c in (*REQUIRED_COLUMNS, "label_1") if c not in rows]
    if missing:
        raise ValueError(f"cannot write {path}: missing column(s) {missing}")
    columns = dict(rows)
    for key in ("jpg_0", "jpg_1"):
        columns[key] = [im if isinstance(im, bytes) else encode_png(im) for im in columns[key]]
    table = pa.table(columns)
    return atomic_write(path, lambda file: pq.write_table(table, file))

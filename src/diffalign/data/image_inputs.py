"""The images that `diffalign score` reads, and the prompt of each; winners-only training reads an image
folder the same way (`winners_folder_table`).

An input is one of:

* an image file; its prompt is `--prompt TEXT` or the text of a sidecar file with the same stem
  (`cat.png` -> `cat.txt`);
* a folder, searched recursively (hidden files and folders skipped). A `metadata.jsonl`,
  `metadata.csv` or `metadata.parquet` in it (Hugging Face imagefolder convention: a `file_name`
  column relative to the metadata file, and a `prompt`, `caption` or `text` column) gives one image
  per row; the folder's other images take their prompt from a sidecar `.txt`. Text and data files
  (`.txt`, `.md`, `.json`, `.csv`, `.parquet`, ...) are skipped; any other non-image file is
  reported. A folder of parquet files and no images is a pair table (below);
* a metadata file (`.jsonl`, `.csv` or `.parquet` with a `file_name` column) on its own;
* a Pick-a-Pic-schema pair table (a parquet file, or a folder of parquet shards without images):
  every row gives two images, `jpg_0` and `jpg_1`, scored against its `caption`.

`--prompt` overrides every other source. Problems with one image (unreadable, missing, no prompt)
become that image's error; problems with an input as a whole raise `InputError`.
"""

from __future__ import annotations

import csv
import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from ..files import read_jsonl
from .pair_images import PairImages
from .pairs import METADATA_NAMES, REQUIRED_COLUMNS, image_suffixes, load_pair_table

PROMPT_KEYS = ("prompt", "caption", "Prompt", "text")  # the prompt column of metadata rows and prompt tables

METADATA_SUFFIXES = (".jsonl", ".csv", ".parquet")
# Companion files that sit beside images and are never images themselves (prompts, notes, earlier
# score files): skipped in folders.
COMPANION_SUFFIXES = frozenset({".txt", ".md", ".json", ".jsonl", ".csv", ".tsv", ".yaml", ".yml", ".log", ".parquet"})
PAIR_COLUMNS = ("caption", "jpg_0", "jpg_1")


class InputError(ValueError):
    """An input that cannot be used at all (not found, malformed metadata, no prompts anywhere)."""


@dataclass(slots=True)
class ImageItem:
    """One image to score: where it comes from, its prompt, how to load it, or why it cannot be scored.

    `file` is the image's path, or the parquet path for a row of a pair table (then `row` and
    `image`, "jpg_0"/"jpg_1", say which image). `load` returns the image as RGB; it is None when
    `error` already says why the image cannot be scored.
    """

    file: str
    prompt: str | None
    load: Callable[[], Image.Image] | None = None
    row: int | None = None
    image: str | None = None
    error: str | None = None

    @property
    def where(self) -> str:
        """The image named for messages: its path, or `table row N jpg_K`."""
        return self.file if self.row is None else f"{self.file} row {self.row} {self.image}"


def open_image(path: Path) -> Image.Image:
    """Open and fully decode an image file as RGB; a ValueError says why it cannot be read."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except Exception as error:  # Pillow raises many types for unreadable or truncated data
        raise ValueError(f"cannot read image ({type(error).__name__}: {error})") from error


def _sidecar_prompt(path: Path) -> str | None:
    sidecar = path.with_suffix(".txt")
    return sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else None


def _prompt_of_row(row: dict) -> str | None:
    for key in PROMPT_KEYS:
        value = row.get(key)
        if value is not None and not (isinstance(value, float) and np.isnan(value)):
            return str(value)
    return None


def _no_prompt(where: str) -> str:
    return (
        f"no prompt ({where}); give --prompt TEXT, a sidecar .txt with the image's stem, "
        f"or a metadata row with a {'/'.join(PROMPT_KEYS)} column"
    )


def read_metadata_rows(path: Path) -> list[tuple[str, dict]]:
    """The rows of a metadata file (.jsonl, .csv or .parquet), each with its location for messages; an
    InputError names a file that is not what its suffix says."""
    import pyarrow as pa

    try:
        return _metadata_rows(path)
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not a UTF-8 text file (byte {error.start} is not UTF-8)") from error
    except pa.ArrowInvalid as error:
        raise InputError(f"{path}: not a readable parquet file ({error})") from error


def _metadata_rows(path: Path) -> list[tuple[str, dict]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for where, _, row in read_jsonl(path, InputError):
            if not isinstance(row, dict):
                raise InputError(f"{where}: expected a JSON object with file_name, got {json.dumps(row)}")
            rows.append((where, row))
        return rows
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return [(f"{path} row {i + 2}", row) for i, row in enumerate(csv.DictReader(f))]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return [(f"{path} row {i}", row) for i, row in enumerate(pq.read_table(path).to_pylist())]
    raise InputError(f"{path}: metadata must be .jsonl, .csv or .parquet")


def metadata_items(path: Path, prompt: str | None) -> list[ImageItem]:
    """One item per row of a metadata file; `file_name` is relative to the metadata file's folder."""
    rows = read_metadata_rows(path)
    if not rows:
        raise InputError(f"{path}: no rows")
    columns = set().union(*(row for _, row in rows))
    if "file_name" not in columns:
        raise InputError(f"{path}: no file_name column (found {', '.join(sorted(map(str, columns)))}); each row must name an image")
    if prompt is None and not columns.intersection(PROMPT_KEYS):
        raise InputError(
            f"{path}: no prompt column (expected one of {', '.join(PROMPT_KEYS)}; found {', '.join(sorted(map(str, columns)))}); "
            "add one, or give --prompt TEXT for every image"
        )
    items = []
    for where, row in rows:
        name = row.get("file_name")
        if not name:
            items.append(ImageItem(file=str(path), prompt=None, error=f"{where}: empty file_name"))
            continue
        image_path = path.parent / str(name)
        text = prompt if prompt is not None else _prompt_of_row(row)
        items.append(_file_item(image_path, text, listed_in=where))
        if text is None and items[-1].error is None:
            items[-1].error = _no_prompt(f"{where} has none")
    return items


def _file_item(path: Path, prompt: str | None, listed_in: str | None = None) -> ImageItem:
    """An item for an image file; missing files and non-image types become errors."""
    item = ImageItem(file=str(path), prompt=prompt)
    if not path.is_file():
        item.error = f"not found (listed in {listed_in})" if listed_in else "not found"
    elif path.suffix.lower() not in image_suffixes():
        kind = f"'{path.suffix}'" if path.suffix else "no extension"
        item.error = f"not a supported image type ({kind})"
    else:
        item.load = functools.partial(open_image, path)
    return item


def pair_table_items(path: str) -> tuple[datasets.Dataset, list[ImageItem]]:
    """The pair table at `path` (local parquet file, folder, glob or hub id) and two items per row.

    Items come in row order, `jpg_0` then `jpg_1`, each scored against the row's caption (an empty
    caption scores as ""); images are decoded only when an item is loaded.
    """
    table = load_pair_table(path)
    captions = list(table["caption"])
    images = PairImages(table, path)
    items = []
    for i in range(len(images)):
        row, key = images.locate(i)
        items.append(ImageItem(file=path, prompt=captions[row] or "", load=images[i], row=row, image=key))
    return table, items


def _visible_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def folder_items(folder: Path, prompt: str | None, exclude: frozenset[Path] = frozenset()) -> list[ImageItem]:
    """Items for a folder of images (with optional metadata files), or for a folder of pair-table shards."""
    files = [p for p in _visible_files(folder) if p.resolve() not in exclude]
    metadata = [p for p in files if p.name in METADATA_NAMES]
    candidates = [p for p in files if p.name not in METADATA_NAMES and p.suffix.lower() not in COMPANION_SUFFIXES]
    suffixes = image_suffixes()
    if not any(p.suffix.lower() in suffixes for p in candidates) and not metadata:
        if any(p.suffix.lower() == ".parquet" for p in files):
            return pair_table_items(str(folder))[1]
        raise InputError(f"{folder}: no images found (searched recursively; image types: .png, .jpg, .webp, ...)")
    items: list[ImageItem] = []
    listed: set[Path] = set()
    for meta in metadata:
        for item in metadata_items(meta, prompt):
            items.append(item)
            listed.add(Path(item.file).resolve())
    for path in candidates:
        if path.resolve() in listed:
            continue
        text = prompt if prompt is not None else _sidecar_prompt(path)
        item = _file_item(path, text)
        if text is None and item.error is None:
            item.error = _no_prompt("no metadata row or sidecar .txt")
        items.append(item)
    return items


def _parquet_kind(path: Path) -> str:
    import pyarrow.parquet as pq

    try:
        names = set(pq.read_schema(path).names)
    except Exception as error:
        raise InputError(f"{path}: cannot read as parquet ({error})") from error
    if set(PAIR_COLUMNS) <= names:
        return "pairs"
    if "file_name" in names:
        return "metadata"
    raise InputError(
        f"{path}: neither a Pick-a-Pic pair table (columns {', '.join(REQUIRED_COLUMNS)}) nor a metadata "
        f"table (file_name and a prompt column); found {', '.join(sorted(names))}"
    )


def collect_items(inputs: Sequence[str], prompt: str | None = None, exclude: Sequence[Path] = ()) -> list[ImageItem]:
    """Every image that `inputs` name, in order, each with its prompt (see the module docstring).

    `exclude` lists files never to pick up from folders (the output file of the run). Raises
    `InputError` for an input that does not exist or cannot be used at all.
    """
    skip = frozenset(Path(p).resolve() for p in exclude)
    items: list[ImageItem] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            items.extend(folder_items(path, prompt, skip))
        elif not path.exists():
            raise InputError(f"{raw}: no such file or folder")
        elif path.suffix.lower() == ".parquet" and _parquet_kind(path) == "pairs":
            items.extend(pair_table_items(str(path))[1])
        elif path.suffix.lower() in METADATA_SUFFIXES:
            items.extend(metadata_items(path, prompt))
        else:
            text = prompt if prompt is not None else _sidecar_prompt(path)
            item = _file_item(path, text)
            if text is None and item.error is None:
                item.error = _no_prompt("no sidecar .txt")
            items.append(item)
    if prompt is not None:
        for item in items:
            item.prompt = prompt
    return items


def check_prompts(items: Sequence[ImageItem]) -> None:
    """Raise `InputError` with instructions when not one image has a prompt (then nothing could be scored)."""
    if not items or any(item.prompt is not None for item in items):
        return
    example = Path(items[0].file)
    raise InputError(
        f"no prompt for any of the {len(items)} image(s) (e.g. {example}). Give prompts by one of:\n"
        f"  --prompt TEXT            the same prompt for every image (--prompt \"\" for prompt-free scorers such as aesthetic)\n"
        f"  {example.with_suffix('.txt').name:<24} a sidecar text file beside each image\n"
        f"  metadata.jsonl           in the folder: one {{\"file_name\": ..., \"prompt\": ...}} per line (or metadata.csv)"
    )


def winners_folder_table(path: Path) -> datasets.Dataset:
    """The images of a folder (or metadata file) with their prompts, as `diffalign score` reads them, as a
    winners-only pair table: `caption`, `jpg_0` (a datasets Image value naming the file, read when the
    pair is served), `label_0` = 1, `image_0_url` = the file. Images that cannot be used (missing, no
    prompt, not an image type) are an error listing them; an image that fails to decode is skipped and
    reported during training like a corrupt pair."""
    items = collect_items([str(path)])
    bad = [item for item in items if item.error is not None or item.row is not None]
    if bad:
        listed = "\n  ".join(
            f"{item.where}: {item.error or 'a pair-table row, not an image file'}" for item in bad[:5]
        )
        more = f"\n  ... and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(f"{path}: {len(bad)} of {len(items)} image(s) cannot be training winners:\n  {listed}{more}")
    files = [str(Path(item.file).resolve()) for item in items]
    return datasets.Dataset.from_dict({
        "caption": [item.prompt or "" for item in items],
        "jpg_0": [{"bytes": None, "path": file} for file in files],
        "label_0": [1.0] * len(items),
        "label_1": [0.0] * len(items),
        "image_0_url": files,
    })

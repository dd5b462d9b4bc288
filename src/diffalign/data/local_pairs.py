"""Your own preference pairs as a JSONL or CSV file of image paths, read into the Pick-a-Pic v2 schema.

Columns (JSONL keys or CSV header): `prompt`, `chosen`, `rejected` (image paths, relative to the
file's folder or absolute), optionally `caption_chosen`, `caption_rejected` (each image's own
caption, Pick-Double-Caption style) and `score_chosen`, `score_rejected`. Each row becomes
`caption`=prompt, `jpg_0`=chosen bytes, `jpg_1`=rejected bytes, `label_0`=1, `label_1`=0,
`image_0_url`/`image_1_url`=the paths, plus `caption_0/1` and `score_0/1` when given. For methods that
learn from the preferred images alone, `rejected` may be left out. A missing
image file becomes empty bytes, so training skips and reports the row like a corrupt image.
The images are read into memory; for large sets write parquet shards with `write_pair_table`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets

SUFFIXES = (".jsonl", ".csv")
FOLDER_FILES = ("pairs.jsonl", "pairs.csv")
REQUIRED_KEYS = ("prompt", "chosen", "rejected")
WINNER_KEYS = ("prompt", "chosen")  # winners-only methods (SePPO, SFT) need no rejected image


def local_pairs_file(path: str | Path) -> Path | None:
    """The JSONL/CSV pairs file `path` names (the file, or a folder's pairs.jsonl/pairs.csv), else None."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix in SUFFIXES:
        return path
    if path.is_dir():
        for name in FOLDER_FILES:
            if (path / name).is_file():
                return path / name
    return None


def _rows(file: Path) -> list[dict]:
    """The rows of a pairs file; a ValueError names the file (and line) that is not UTF-8 CSV or JSON lines."""
    try:
        if file.suffix == ".csv":
            with file.open(newline="", encoding="utf-8") as handle:
                return list(csv.DictReader(handle))
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        kind = "CSV" if file.suffix == ".csv" else "JSON lines"
        raise ValueError(f"{file}: not a {kind} text file (byte {error.start} is not UTF-8)") from error
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{file} line {number}: not JSON ({error})") from error
            if not isinstance(row, dict):
                raise ValueError(f"{file} line {number}: expected a JSON object with prompt, chosen and rejected, "
                                 f"got {type(row).__name__}")
            rows.append(row)
    return rows


def _read(image: Path) -> bytes:
    try:
        return image.read_bytes()
    except OSError:
        return b""


def load_local_pairs(file: str | Path, *, winners_only: bool = False) -> datasets.Dataset:
    """The pairs of a JSONL/CSV file as a Pick-a-Pic-schema table (winner as jpg_0, label_0 = 1).

    `winners_only`: `rejected` may be absent (jpg_1 is then empty bytes)."""
    file = Path(file)
    rows = _rows(file)
    if not rows:
        raise ValueError(f"{file}: no pairs (the file holds no rows)")
    keys = set().union(*(r.keys() for r in rows))
    required = WINNER_KEYS if winners_only else REQUIRED_KEYS
    missing = [k for k in required if k not in keys]
    if missing:
        raise ValueError(
            f"{file}: missing column(s) {missing}; expected {list(required)} (+ caption_chosen, "
            f"caption_rejected, score_chosen, score_rejected), found {sorted(keys)}"
        )
    columns: dict[str, list] = {c: [] for c in ("caption", "jpg_0", "jpg_1", "label_0", "label_1",
                                                 "image_0_url", "image_1_url")}
    extras = [(f"caption_{side}", f"caption_{k}") for k, side in enumerate(("chosen", "rejected"))
              if f"caption_{side}" in keys]
    extras += [(f"score_{side}", f"score_{k}") for k, side in enumerate(("chosen", "rejected"))
               if f"score_{side}" in keys]
    for _, name in extras:
        columns[name] = []
    for number, row in enumerate(rows, 1):
        for key in required:
            if not row.get(key):
                raise ValueError(f"{file} row {number}: empty {key!r}")
        for k, side in enumerate(("chosen", "rejected")):
            if not row.get(side):  # winners-only data without a rejected image
                columns[f"jpg_{k}"].append(b"")
                columns[f"image_{k}_url"].append("")
                continue
            image = Path(row[side]).expanduser()
            image = image if image.is_absolute() else file.parent / image
            columns[f"jpg_{k}"].append(_read(image))
            columns[f"image_{k}_url"].append(str(image))
        columns["caption"].append(str(row["prompt"]))
        columns["label_0"].append(1.0)
        columns["label_1"].append(0.0)
        for source, name in extras:
            value = row.get(source)
            if name.startswith("score_"):
                value = float(value) if value not in (None, "") else None
            columns[name].append(value)
    return datasets.Dataset.from_dict(columns)

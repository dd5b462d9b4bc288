"""Dataset cards: the `README.md` written next to every dataset the toolkit creates.

A card is in the Hugging Face dataset-card style: YAML front matter whose `configs` entry names the
parquet shards (so `datasets.load_dataset(folder)` and the hub viewer find them and nothing else in
the folder), then how the data was made: the command line, the model, the scorers and the unit of
their scores, seeds, counts, date and diffalign version.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import yaml

from .. import __version__
from ..files import atomic_write_text

DEFAULT_DATA_FILES = "data/train-*.parquet"


def card_front_matter(data_files: str = DEFAULT_DATA_FILES, tags: tuple[str, ...] = ()) -> dict:
    """The YAML front matter: one `default` config whose `train` split is the files matching `data_files`."""
    return {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": data_files}]}],
        "tags": ["diffalign", "preference-pairs", *tags],
    }


def write_dataset_card(
    folder: str | Path,
    title: str,
    description: str,
    details: dict,
    command: str | None = None,
    data_files: str = DEFAULT_DATA_FILES,
    tags: tuple[str, ...] = (),
) -> Path:
    """Write `folder/README.md` atomically: front matter, `title`, `description` (Markdown), the
    command line that made the data, and `details` (JSON-ready: model, scorers, seeds, counts...)
    together with the date and diffalign version. Returns the card's path."""
    folder = Path(folder)
    made = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "diffalign_version": __version__,
        **details,
    }
    front = yaml.safe_dump(card_front_matter(data_files, tags), sort_keys=False)
    lines = [f"---\n{front}---\n", f"# {title}\n", description.strip() + "\n"]
    if command:
        lines.append(f"## Command\n\n```\n{command}\n```\n")
    lines.append(f"## How it was made\n\n```json\n{json.dumps(made, indent=2, default=str)}\n```\n")
    path = folder / "README.md"
    atomic_write_text(path, "\n".join(lines))
    return path

"""Reading a `diffalign generate` output folder: its images, their prompts and seeds, and the shared settings.

The folder holds `metadata.jsonl` (one JSON object per image, Hugging Face imagefolder convention,
`file_name` relative to the folder), the images, and `generation.json` (the settings all images share).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..files import read_jsonl

METADATA_FILE = "metadata.jsonl"
SETTINGS_FILE = "generation.json"
REQUIRED_KEYS = {"file_name": str, "prompt": str, "prompt_index": int, "seed": int}


@dataclass
class GeneratedImage:
    """One generated image: its file, the prompt (and its index in the prompt set) and seed that drew it."""

    file: Path
    prompt: str
    prompt_index: int
    seed: int
    category: str | None
    meta: dict


@dataclass
class GeneratedFolder:
    """The images of one generation folder, sorted by (prompt_index, seed), and its shared settings."""

    folder: Path
    images: list[GeneratedImage]
    settings: dict = field(default_factory=dict)
    missing: int = 0  # metadata lines whose image file does not exist
    _index: dict[tuple[int, int], GeneratedImage] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._index = {(image.prompt_index, image.seed): image for image in self.images}

    def get(self, prompt_index: int, seed: int) -> GeneratedImage | None:
        """The image of prompt `prompt_index` drawn with `seed`, or None if the folder has none."""
        return self._index.get((prompt_index, seed))

    def by_prompt_seed(self, prompt_text: str, seed: int) -> GeneratedImage | None:
        """The first image (lowest prompt index) whose prompt is `prompt_text`, drawn with `seed`, or None."""
        for image in self.images:
            if image.prompt == prompt_text and image.seed == seed:
                return image
        return None

    def prompts(self) -> list[tuple[int, str]]:
        """The distinct (prompt_index, prompt) of the folder, by prompt index."""
        seen: dict[int, str] = {}
        for image in self.images:
            seen.setdefault(image.prompt_index, image.prompt)
        return list(seen.items())

    def seeds(self) -> list[int]:
        """The distinct seeds of the folder, ascending."""
        return sorted({image.seed for image in self.images})


def _check_record(record, where: str) -> dict:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key, kind in REQUIRED_KEYS.items():
        if key not in record:
            raise ValueError(f"{where}: missing key {key!r} (every line needs {', '.join(REQUIRED_KEYS)})")
        value = record[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{where}: {key!r} must be {kind.__name__}, got {value!r}")
    category = record.get("category")
    if category is not None and not isinstance(category, str):
        raise ValueError(f"{where}: 'category' must be a string or null, got {category!r}")
    return record


def _read_settings(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(settings).__name__}")
    return settings


def read_generated(folder: str | Path) -> GeneratedFolder:
    """Read a `diffalign generate` folder: its images whose files exist (later duplicate lines win) and settings."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder: give the output folder of `diffalign generate`")
    metadata = folder / METADATA_FILE
    if not metadata.is_file():
        raise FileNotFoundError(
            f"{folder} has no {METADATA_FILE}, so it is not a `diffalign generate` output; make one with "
            "`diffalign generate` (see `diffalign generate --help`)"
        )
    records: dict[tuple[int, int], tuple[int, dict]] = {}
    for where, number, value in read_jsonl(metadata):
        record = _check_record(value, where)
        records[(record["prompt_index"], record["seed"])] = (number, record)  # a later line wins
    images, missing = [], 0
    texts: dict[int, tuple[int, str]] = {}
    for (prompt_index, seed), (number, record) in sorted(records.items()):
        file = folder / record["file_name"]
        if not file.is_file():
            missing += 1
            continue
        first = texts.setdefault(prompt_index, (number, record["prompt"]))
        if first[1] != record["prompt"]:
            raise ValueError(
                f"{metadata}: prompt_index {prompt_index} has the prompt {first[1]!r} on line {first[0]} but "
                f"{record['prompt']!r} on line {number}; one folder must come from one prompt set"
            )
        images.append(GeneratedImage(
            file=file, prompt=record["prompt"], prompt_index=prompt_index, seed=seed,
            category=record.get("category"), meta=record,
        ))
    return GeneratedFolder(folder=folder, images=images, settings=_read_settings(folder / SETTINGS_FILE),
                           missing=missing)

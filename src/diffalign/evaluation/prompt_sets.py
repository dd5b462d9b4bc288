"""Prompt sets for generation and evaluation: prompt files and the named benchmark sets of the papers.

`load_prompt_set(spec)` reads either a file (`.txt`, `.csv`, `.tsv`, `.jsonl`, `.json`, `.parquet`)
or a named set:

    parti                PartiPrompts, 1632 prompts in 12 categories (google-research/parti)
    pickapic-test        Pick-a-Pic v2 `test_unique` captions
    pickapic-validation  Pick-a-Pic v2 `validation_unique` captions (500, as in SePPO and SPO)
    hpdv2                the HPSv2 benchmark: 4 styles x 800 prompts
    demo                 the 89 held-out captions of the embedded shapes world

`NAME:CATEGORY` (`parti:Animals`, `hpdv2:anime`, `prompts.tsv:Food`) keeps one category. Local copies
are looked up in `$DIFFALIGN_PROMPTS_DIR` and then in diffalign's cache folder before anything is
downloaded; every offline failure says which file to get from where and where to put it.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..data.image_inputs import PROMPT_KEYS
from ..files import give_usual_permissions, read_jsonl
from ..paths import resolve_local

CATEGORY_KEYS = ("category", "Category", "style")

PROMPTS_DIR_ENV = "DIFFALIGN_PROMPTS_DIR"
PICKAPIC_ENV = "DIFFALIGN_PICKAPIC_PROMPTS"
PARTI_FILE = "PartiPrompts.tsv"
PARTI_URL = "https://raw.githubusercontent.com/google-research/parti/main/PartiPrompts.tsv"
PICKAPIC_DATASET = "yuvalkirstain/pickapic_v2_no_images"
HPDV2_DATASET = "zhwang/HPDv2"
HPDV2_STYLES = ("anime", "concept-art", "paintings", "photo")
DEMO_PROMPTS = "assets/demo/prompts_heldout.txt"
BUNDLED_PARTI = "assets/prompts/PartiPrompts.tsv"  # google-research/parti, Apache-2.0 (LICENSE beside it)


class PromptFileError(ValueError):
    """A prompt file whose content cannot be read as prompts; the message names the file and row."""


class PromptSetNotFound(FileNotFoundError):
    """A prompt file or named set that is neither on disk nor reachable; the message says what to get."""


@dataclass(frozen=True)
class Prompt:
    """One prompt and, when its set has them, its category (Parti category, HPSv2 style, shape)."""

    text: str
    category: str | None = None


@dataclass
class PromptSet:
    """An ordered list of prompts with the name it was asked for by and where it was read from."""

    name: str
    source: str
    prompts: list[Prompt]

    @property
    def texts(self) -> list[str]:
        """The prompt texts, in order."""
        return [p.text for p in self.prompts]

    @property
    def categories(self) -> list[str | None]:
        """Each prompt's category (None where it has none), in order."""
        return [p.category for p in self.prompts]

    @property
    def has_categories(self) -> bool:
        """Whether any prompt has a category."""
        return any(p.category is not None for p in self.prompts)

    @property
    def category_names(self) -> list[str]:
        """The distinct categories, in order of first appearance."""
        return list(dict.fromkeys(c for c in self.categories if c is not None))

    def __len__(self) -> int:
        return len(self.prompts)


# ---------------------------------------------------------------------------------------------------
# Prompt files


def read_prompt_file(path: str | Path) -> list[Prompt]:
    """The prompts of a file, by suffix: `.csv`/`.tsv`, `.jsonl`, `.json`, `.parquet`, else text.

    Text files hold one prompt per line (blank lines and `#` comments skipped) and no categories.
    Tables and JSON objects take the prompt from the first of PROMPT_KEYS they have and the category
    from the first of CATEGORY_KEYS, if any; a `.json` file may also be a plain list of strings.
    """
    local = resolve_local(path)
    if local is None:
        raise PromptSetNotFound(f"prompt file {path} not found (named prompt sets: {', '.join(PROMPT_SETS)})")
    if not local.is_file():
        raise PromptSetNotFound(f"{local} is a folder, not a prompt file")
    suffix = local.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return _read_table(local, delimiter="\t" if suffix == ".tsv" else ",")
    if suffix == ".jsonl":
        return _read_jsonl(local)
    if suffix == ".json":
        return _read_json(local)
    if suffix == ".parquet":
        return _read_parquet(local)
    lines = [line.strip() for line in local.read_text(encoding="utf-8").splitlines()]
    return [Prompt(line) for line in lines if line and not line.startswith("#")]


def _columns(found: Iterable[str], where: str) -> tuple[str, str | None]:
    """The prompt column and the category column (or None) among the column names `found`."""
    found = [name for name in found if name is not None]
    prompt_key = next((key for key in PROMPT_KEYS if key in found), None)
    if prompt_key is None:
        raise PromptFileError(
            f"{where}: no prompt column (expected one of {', '.join(PROMPT_KEYS)}; "
            f"found {', '.join(found) if found else 'no columns'})"
        )
    return prompt_key, next((key for key in CATEGORY_KEYS if key in found), None)


def _prompt(text: object, category: object, where: str) -> Prompt:
    if not isinstance(text, str) or not text.strip():
        raise PromptFileError(f"{where}: the prompt is {'empty' if text in (None, '') else repr(text)}")
    return Prompt(text, None if category in (None, "") else str(category))


def _read_table(path: Path, delimiter: str) -> list[Prompt]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        prompt_key, category_key = _columns(reader.fieldnames or [], str(path))
        return [
            _prompt(row[prompt_key], row.get(category_key) if category_key else None, f"{path} line {reader.line_num}")
            for row in reader
        ]


def _from_object(item: object, where: str) -> Prompt:
    if isinstance(item, str):
        return _prompt(item, None, where)
    if not isinstance(item, dict):
        raise PromptFileError(f"{where}: expected a prompt string or an object, got {type(item).__name__}")
    prompt_key, category_key = _columns(item, where)
    return _prompt(item[prompt_key], item.get(category_key) if category_key else None, where)


def _read_jsonl(path: Path) -> list[Prompt]:
    return [_from_object(item, where) for where, _, item in read_jsonl(path, PromptFileError)]


def _read_json(path: Path) -> list[Prompt]:
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise PromptFileError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from error
    if not isinstance(items, list):
        raise PromptFileError(f"{path}: expected a JSON list of prompt strings or objects, got {type(items).__name__}")
    return [_from_object(item, f"{path} item [{i}]") for i, item in enumerate(items)]


def _read_parquet(path: Path) -> list[Prompt]:
    import pyarrow.parquet as pq

    prompt_key, category_key = _columns(pq.read_schema(path).names, str(path))
    table = pq.read_table(path, columns=[prompt_key] + ([category_key] if category_key else []))
    texts = table.column(prompt_key).to_pylist()
    categories = table.column(category_key).to_pylist() if category_key else [None] * len(texts)
    return [_prompt(t, c, f"{path} row [{i}]") for i, (t, c) in enumerate(zip(texts, categories))]


# ---------------------------------------------------------------------------------------------------
# Where local copies and downloads live


def diffalign_cache_dir() -> Path:
    """diffalign's cache folder: `$DIFFALIGN_CACHE`, else `$XDG_CACHE_HOME/diffalign`, else `~/.cache/diffalign`."""
    if os.environ.get("DIFFALIGN_CACHE"):
        return Path(os.environ["DIFFALIGN_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "diffalign"


def prompt_dirs() -> list[Path]:
    """The folders searched for local copies of named sets: `$DIFFALIGN_PROMPTS_DIR` (if set), then the cache's `prompts/`."""
    folders = [Path(os.environ[PROMPTS_DIR_ENV]).expanduser()] if os.environ.get(PROMPTS_DIR_ENV) else []
    return [*folders, diffalign_cache_dir() / "prompts"]


def _find_local(*relatives: str) -> Path | None:
    """The first file found among `prompt_dirs()` (in order) under any of the `relatives` names."""
    candidates = (folder / relative for folder in prompt_dirs() for relative in relatives)
    return next((path for path in candidates if path.is_file()), None)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download_to(url: str, target: Path) -> None:
    """Download `url` to `target` atomically (a temporary file in the same folder, then renamed).

    Refuses at once when HF_HUB_OFFLINE is set.
    """
    if _offline():
        raise ConnectionError("HF_HUB_OFFLINE is set")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=target.suffix)
    try:
        with os.fdopen(handle, "wb") as f, urllib.request.urlopen(url, timeout=60) as response:
            f.write(response.read())
        read_prompt_file(temporary)  # a truncated or HTML answer must not land in the cache
        give_usual_permissions(Path(temporary))  # mkstemp creates 0600
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)


def _reason(error: BaseException) -> str:
    """The innermost cause of `error`, as `Type: message`, shortened."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = f"{type(error).__name__}: {error}".splitlines()[0]
    return text if len(text) <= 300 else text[:297] + "..."


# ---------------------------------------------------------------------------------------------------
# Named sets: each loader takes the requested category (a hint it may use to read less) and returns
# the prompts and where they came from.


def _parti(category: str | None) -> tuple[list[Prompt], str]:
    local = _find_local(PARTI_FILE) or resolve_local(BUNDLED_PARTI)
    if local is None:
        local = prompt_dirs()[-1] / PARTI_FILE
        try:
            download_to(PARTI_URL, local)
        except Exception as error:  # offline, proxy, HTTP error, bad content: one actionable message
            put_here = prompt_dirs()[0] / PARTI_FILE
            raise PromptSetNotFound(
                f"parti: {PARTI_FILE} is not in {' or '.join(str(d) for d in prompt_dirs())} and could not be "
                f"downloaded from {PARTI_URL} ({_reason(error)}). Download that file elsewhere and put it at "
                f"{put_here} (or in the folder named by ${PROMPTS_DIR_ENV}), or pass the file itself: "
                f"--prompts path/to/{PARTI_FILE}"
            ) from error
    return read_prompt_file(local), str(local)


def _load_captions(dataset: str, split: str) -> list[str]:
    """The `caption` column of one split of a Hugging Face dataset (hub id or local folder), nothing else.

    The split's own data files are asked for first (`data/{split}-*`, the layout of Pick-a-Pic on the
    hub), so the large train split is never downloaded; other layouts fall back to the split as declared.
    """
    import datasets

    try:
        table = datasets.load_dataset(
            dataset, data_files={split: f"data/{split}-*"}, split=split, columns=["caption"]
        )
    except FileNotFoundError:
        table = datasets.load_dataset(dataset, split=split, columns=["caption"])
    return [str(c) for c in table["caption"] if c is not None]


def _pickapic(split: str) -> Callable[[str | None], tuple[list[Prompt], str]]:
    def load(category: str | None) -> tuple[list[Prompt], str]:
        dataset = os.environ.get(PICKAPIC_ENV) or PICKAPIC_DATASET
        try:
            captions = _load_captions(dataset, split)
        except Exception as error:
            raise PromptSetNotFound(
                f"pickapic: could not read the 'caption' column of split {split!r} of the dataset {dataset!r} "
                f"({_reason(error)}). Offline, download the split elsewhere (hf download {PICKAPIC_DATASET} "
                f"--repo-type dataset --include 'data/{split}-*' --local-dir pickapic) and point ${PICKAPIC_ENV} at "
                f"that folder, or pass a local file of the captions instead: --prompts captions.parquet (or .csv, "
                f".jsonl, .txt)"
            ) from error
        unique = list(dict.fromkeys(captions))  # keeps the first occurrence of each caption, in order
        return [Prompt(c) for c in unique], f"{dataset} split {split}"

    return load


def _hpdv2(category: str | None) -> tuple[list[Prompt], str]:
    styles = HPDV2_STYLES if category is None else tuple(s for s in HPDV2_STYLES if s.lower() == category.lower())
    if not styles:
        raise ValueError(f"hpdv2 has no style {category!r}; its styles are {', '.join(HPDV2_STYLES)}")
    prompts, sources = [], []
    for style in styles:
        path = _find_local(f"hpdv2/{style}.json", f"hpdv2/benchmark/{style}.json") or _hpdv2_download(style)
        prompts += [Prompt(p.text, style) for p in read_prompt_file(path)]
        sources.append(str(path))
    return prompts, ", ".join(sources)


def _hpdv2_download(style: str) -> Path:
    from huggingface_hub import hf_hub_download

    filename = f"benchmark/{style}.json"
    try:
        return Path(hf_hub_download(repo_id=HPDV2_DATASET, filename=filename, repo_type="dataset"))
    except Exception as error:
        folder = prompt_dirs()[0] / "hpdv2"
        raise PromptSetNotFound(
            f"hpdv2: {style}.json is not in {' or '.join(str(d / 'hpdv2') for d in prompt_dirs())} and {filename} "
            f"could not be fetched from the hub dataset {HPDV2_DATASET} ({_reason(error)}). Download the files "
            f"benchmark/{{{','.join(HPDV2_STYLES)}}}.json elsewhere and put them in {folder}/ (with or without "
            f"their benchmark/ folder), e.g. hf download {HPDV2_DATASET} --repo-type dataset --include "
            f"'benchmark/*.json' --local-dir {folder}"
        ) from error


def _demo(category: str | None) -> tuple[list[Prompt], str]:
    from ..synthetic.domain import parse_caption

    local = resolve_local(DEMO_PROMPTS)
    if local is None:
        raise PromptSetNotFound(
            f"demo: {DEMO_PROMPTS} not found; the demo prompts live in a source checkout of diffalign "
            f"(run from its root, or pass --prompts path/to/prompts_heldout.txt)"
        )
    return [Prompt(p.text, parse_caption(p.text).shape) for p in read_prompt_file(local)], DEMO_PROMPTS


@dataclass(frozen=True)
class NamedPromptSet:
    """A registry entry: a one-line description and the function that reads the set."""

    description: str
    load: Callable[[str | None], tuple[list[Prompt], str]]


PROMPT_SETS: dict[str, NamedPromptSet] = {
    "parti": NamedPromptSet("PartiPrompts: 1632 prompts, 12 categories (google-research/parti)", _parti),
    "pickapic-test": NamedPromptSet(f"Pick-a-Pic v2 test_unique captions ({PICKAPIC_DATASET})", _pickapic("test_unique")),
    "pickapic-validation": NamedPromptSet(
        f"Pick-a-Pic v2 validation_unique captions, 500 ({PICKAPIC_DATASET})", _pickapic("validation_unique")
    ),
    "hpdv2": NamedPromptSet(
        f"HPSv2 benchmark: 4 styles x 800 prompts, category = style ({HPDV2_DATASET})", _hpdv2
    ),
    "demo": NamedPromptSet("the 89 held-out captions of the shapes world, category = shape", _demo),
}


def available_prompt_sets() -> dict[str, str]:
    """Each named prompt set with its one-line description (for --help)."""
    return {name: entry.description for name, entry in PROMPT_SETS.items()}


# ---------------------------------------------------------------------------------------------------
# The entry point


def _keep_category(prompts: list[Prompt], category: str, name: str) -> list[Prompt]:
    """The prompts of one category: an exact match, else a unique case-insensitive one."""
    names = list(dict.fromkeys(p.category for p in prompts if p.category is not None))
    if not names:
        raise ValueError(f"{name} has no categories, so it cannot be filtered by {category!r}")
    if category not in names:
        folded = [c for c in names if c.lower() == category.lower()]
        if len(folded) != 1:
            raise ValueError(f"{name} has no category {category!r}; its categories are {', '.join(names)}")
        category = folded[0]
    return [p for p in prompts if p.category == category]


def _parse_spec(spec: str) -> tuple[str, str | None, bool]:
    """(name or path, category or None, whether it names a registered set)."""
    if spec.lower() in PROMPT_SETS:
        return spec.lower(), None, True
    head, sep, tail = spec.partition(":")
    if sep and head.lower() in PROMPT_SETS:
        return head.lower(), tail, True
    if resolve_local(spec) is None:
        head, sep, tail = spec.rpartition(":")
        if sep and head and resolve_local(head) is not None:
            return head, tail, False
    return spec, None, False


def load_prompt_set(spec: str | Path, limit: int | None = None) -> PromptSet:
    """The prompt set `spec` names: a named set (`available_prompt_sets()`) or a prompt file, optionally
    `:CATEGORY`-filtered, cut to its first `limit` prompts (after the filter).

    The set's `name` is `spec` as given; its `source` says which file or dataset it was read from.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of prompts, got {limit}")
    text = str(spec)
    target, category, named = _parse_spec(text)
    if named:
        prompts, source = PROMPT_SETS[target].load(category)
    else:
        local = resolve_local(target)
        if local is None:
            raise PromptSetNotFound(
                f"prompt set {text!r} is neither a file nor a named set ({', '.join(PROMPT_SETS)}; "
                f"NAME:CATEGORY keeps one category)"
            )
        prompts, source = read_prompt_file(local), str(local)
    if category is not None:
        prompts = _keep_category(prompts, category, target)
    if not prompts:
        raise ValueError(f"prompt set {text!r} ({source}) holds no prompts")
    return PromptSet(name=text, source=source, prompts=prompts[:limit] if limit else prompts)


def load_prompts(spec: str | Path) -> list[str]:
    """The prompt texts of a prompt file or named set (see `load_prompt_set`)."""
    return load_prompt_set(spec).texts

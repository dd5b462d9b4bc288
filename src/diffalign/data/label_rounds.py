"""A round of images for a person to label (D3PO's human-feedback mode), the person's decisions, and the
preference pairs they make.

A round folder holds:

- `round.json`: `{"round": 3, "prompts": [{"prompt": "a cat", "images": ["p0000-i0.png", "p0000-i1.png"]}, ...]}`,
  the image files (PNG) beside it, at least two a prompt.
- `labels.jsonl`: the decisions log, one JSON line an action, appended (and fsynced) as it is made:
  `{"prompt": 0, "choice": 1}` (image 1 of prompt 0 is preferred), `{"prompt": 1, "choice": "tie"}`,
  `{"prompt": 2, "choice": "skip"}`, and `{"undo": true}`, which takes the last action back. A later
  choice for a prompt replaces the earlier one; its undo restores the earlier one.
- `pairs.jsonl`: the pairs of the decisions, in the local-pairs format (`diffalign.data.local_pairs`):
  for image c chosen for prompt p, one row `{"prompt", "chosen": c's file, "rejected": other file}` for
  each other image of p; ties and skips give none. Rewritten (atomically) from the log after each action.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import atomic_write, atomic_write_text

ROUND_FILE = "round.json"
LABELS_FILE = "labels.jsonl"
PAIRS_FILE = "pairs.jsonl"
TIE = "tie"
SKIP = "skip"
Choice = int | str  # an image index of the prompt, TIE or SKIP


@dataclass(frozen=True)
class RoundPrompt:
    """One prompt of a round and the file names of its images (relative to the round folder)."""

    prompt: str
    images: tuple[str, ...]


@dataclass(frozen=True)
class Round:
    """A round folder as read from its round.json."""

    folder: Path
    index: int
    prompts: tuple[RoundPrompt, ...]

    @property
    def image_files(self) -> frozenset[str]:
        """Every image file name the round lists."""
        return frozenset(name for p in self.prompts for name in p.images)

    def check_choice(self, prompt: object, choice: object) -> tuple[int, Choice]:
        """(prompt, choice) when `prompt` is a prompt index of the round and `choice` an image index of it,
        TIE or SKIP; otherwise a ValueError saying which is wrong."""
        if not _is_int(prompt) or not 0 <= prompt < len(self.prompts):
            raise ValueError(f"prompt {prompt!r} is not a prompt index of round {self.index} "
                             f"(0 to {len(self.prompts) - 1})")
        count = len(self.prompts[prompt].images)
        if choice in (TIE, SKIP) or (_is_int(choice) and 0 <= choice < count):
            return prompt, choice
        raise ValueError(f"choice {choice!r} for prompt {prompt}: expected an image index 0 to {count - 1}, "
                         f"{TIE!r} or {SKIP!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def image_name(prompt: int, image: int) -> str:
    """The file name of image `image` of prompt `prompt` in a round folder."""
    return f"p{prompt:04d}-i{image}.png"


def _round_json(index: int, prompts: list[str], per_prompt: int) -> dict:
    return {"round": index, "prompts": [{"prompt": text, "images": [image_name(p, i) for i in range(per_prompt)]}
                                        for p, text in enumerate(prompts)]}


def write_round(folder: str | Path, round_index: int, prompts: list[str], images: np.ndarray) -> Path:
    """Write a round for labelling: `images` (uint8, (P*I, H, W, 3), prompt-major: the I images of prompt 0
    first) as PNG files, then round.json; returns the folder.

    Atomic: each image, then round.json, goes to a temporary file renamed into place, so round.json appears
    only once every image is there. A folder whose round.json already holds this round (same index, prompts
    and image count) is left as it is, labels included, so a resumed run finds the labelling where it
    stopped; a folder holding another round, or a decisions log without a round.json, is refused
    (FileExistsError): give each round its own folder.
    """
    folder = Path(folder)
    images = np.asarray(images)
    if not prompts:
        raise ValueError("write_round: no prompts")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"write_round: images must be uint8 (P*I, H, W, 3), got {images.dtype} {images.shape}")
    per_prompt, extra = divmod(len(images), len(prompts))
    if extra or per_prompt < 2:
        raise ValueError(f"write_round: {len(images)} images for {len(prompts)} prompts; "
                         "expected I >= 2 images a prompt")
    wanted = _round_json(round_index, list(prompts), per_prompt)
    round_file = folder / ROUND_FILE
    if round_file.exists():
        existing = read_round(folder)
        listed = [{"prompt": p.prompt, "images": list(p.images)} for p in existing.prompts]
        if existing.index != round_index or listed != wanted["prompts"]:
            raise FileExistsError(f"{round_file} holds another round (round {existing.index}, {len(listed)} prompts) "
                                  f"than round {round_index} with these {len(prompts)} prompts; write each round to "
                                  "its own folder")
        return folder
    if (folder / LABELS_FILE).exists():
        raise FileExistsError(f"{folder / LABELS_FILE} exists but {round_file} does not: labels of an unknown round; "
                              "move them away or write the round to another folder")
    for k, image in enumerate(images):
        name = image_name(*divmod(k, per_prompt))
        atomic_write(folder / name, lambda out, pixels=image: Image.fromarray(pixels).save(out, format="PNG"))
    atomic_write_text(round_file, json.dumps(wanted, indent=1, ensure_ascii=False) + "\n")
    return folder


def read_round(folder: str | Path) -> Round:
    """The round of a round folder, checked: round.json readable and well formed, at least two images a
    prompt, plain unique file names, every image present. Errors name the file at fault."""
    folder = Path(folder)
    file = folder / ROUND_FILE
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (expected a round folder holding {ROUND_FILE})")
    if not file.is_file():
        raise FileNotFoundError(f"{file}: not found; {folder} is not a round folder (a D3PO run in human-feedback "
                                "mode writes one per round)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{file}: not valid JSON ({error})") from None
    if not isinstance(data, dict) or not _is_int(data.get("round")) or not isinstance(data.get("prompts"), list):
        raise ValueError(f'{file}: expected {{"round": int, "prompts": [{{"prompt": str, "images": [file, ...]}}, '
                         '...]}')
    if not data["prompts"]:
        raise ValueError(f"{file}: no prompts")
    prompts, seen = [], set()
    for p, entry in enumerate(data["prompts"]):
        where = f"{file} prompt {p}"
        if not (isinstance(entry, dict) and isinstance(entry.get("prompt"), str)
                and isinstance(entry.get("images"), list)):
            raise ValueError(f'{where}: expected {{"prompt": str, "images": [file, ...]}}, got {entry!r}')
        names = entry["images"]
        if len(names) < 2:
            raise ValueError(f"{where}: {len(names)} image(s); a prompt needs at least 2 to compare")
        for name in names:
            if not isinstance(name, str) or not name or name != Path(name).name or name in (".", ".."):
                raise ValueError(f"{where}: image {name!r} is not a plain file name in the round folder")
            if name in seen:
                raise ValueError(f"{where}: image {name!r} is listed twice")
            seen.add(name)
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name}: missing (listed in {where})")
        prompts.append(RoundPrompt(entry["prompt"], tuple(names)))
    return Round(folder, data["round"], tuple(prompts))


def _open_log_for_append(file: Path):
    """The decisions log opened for appending, a torn last line (a write cut short by a crash) cut off first."""
    created = not file.exists()
    handle = file.open("a+b")
    size = handle.seek(0, os.SEEK_END)
    if size:
        handle.seek(size - 1)
        if handle.read(1) != b"\n":
            handle.seek(0)
            handle.truncate(handle.read().rfind(b"\n") + 1)
    if created:
        directory = os.open(file.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the new file's entry in the folder survives a crash, too
        finally:
            os.close(directory)
    return handle


def _append(folder: Path, record: dict) -> None:
    with _open_log_for_append(folder / LABELS_FILE) as handle:
        handle.write(json.dumps(record).encode("utf-8") + b"\n")
        handle.flush()
        os.fsync(handle.fileno())


def actions_of(round_: Round) -> list[tuple[int, Choice]]:
    """The (prompt, choice) actions of the decisions log still in effect, in order: each undo line removes
    the action before it. Only newline-terminated lines count: a torn last line is ignored."""
    file = round_.folder / LABELS_FILE
    if not file.exists():
        return []
    actions: list[tuple[int, Choice]] = []
    for number, line in enumerate(file.read_bytes().split(b"\n")[:-1], 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{file} line {number}: not valid JSON ({error})") from None
        if record == {"undo": True}:
            if actions:
                actions.pop()
        elif isinstance(record, dict) and set(record) == {"prompt", "choice"}:
            try:
                actions.append(round_.check_choice(record["prompt"], record["choice"]))
            except ValueError as error:
                raise ValueError(f"{file} line {number}: {error}") from None
        else:
            raise ValueError(f'{file} line {number}: expected {{"prompt": int, "choice": int | "tie" | "skip"}} '
                             f'or {{"undo": true}}, got {line.decode("utf-8", "replace")}')
    return actions


def decisions_of(round_: Round) -> dict[int, Choice]:
    """{prompt index: choice} of a read round, replayed from its decisions log (the last action of a prompt wins)."""
    return dict(actions_of(round_))


def read_decisions(folder: str | Path) -> dict[int, Choice]:
    """{prompt index: image index, TIE or SKIP} of every decided prompt of a round folder, replayed from
    labels.jsonl."""
    return decisions_of(read_round(folder))


def record_choice(folder: str | Path, prompt: int, choice: Choice) -> None:
    """Append the decision `choice` (an image index, TIE or SKIP) for `prompt` to the decisions log, checked
    against round.json, and fsync it."""
    folder = Path(folder)
    prompt, choice = read_round(folder).check_choice(prompt, choice)
    _append(folder, {"prompt": prompt, "choice": choice})


def record_undo(folder: str | Path) -> int | None:
    """Take the last action back (an undo line in the log, fsynced); the prompt it concerned, or None (and
    nothing written) when there is nothing to undo."""
    folder = Path(folder)
    actions = actions_of(read_round(folder))
    if not actions:
        return None
    _append(folder, {"undo": True})
    return actions[-1][0]


def pairs_of(round_: Round, decisions: dict[int, Choice]) -> list[tuple[int, int, int]]:
    """(prompt, winner image, loser image) of each pair the decisions make: the chosen image against each
    other image of its prompt; ties and skips make none. Ordered by prompt, then loser."""
    return [(p, choice, other) for p, choice in sorted(decisions.items()) if _is_int(choice)
            for other in range(len(round_.prompts[p].images)) if other != choice]


def round_pairs(folder: str | Path) -> list[tuple[int, int, int]]:
    """(prompt index, winner image index, loser image index) of every pair labelled so far in a round folder."""
    round_ = read_round(folder)
    return pairs_of(round_, decisions_of(round_))


def write_pairs(folder: str | Path) -> Path:
    """Rewrite ROUND_DIR/pairs.jsonl (atomically) from the decisions log; returns its path. A round with no
    chosen image yet gets an empty file."""
    round_ = read_round(folder)
    pairs = pairs_of(round_, decisions_of(round_))
    rows = [{"prompt": round_.prompts[p].prompt, "chosen": round_.prompts[p].images[winner],
             "rejected": round_.prompts[p].images[loser]} for p, winner, loser in pairs]
    path = round_.folder / PAIRS_FILE
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


def is_complete(folder: str | Path) -> bool:
    """Whether every prompt of a round folder is decided (a tie or a skip counts as decided)."""
    round_ = read_round(folder)
    return len(decisions_of(round_)) == len(round_.prompts)

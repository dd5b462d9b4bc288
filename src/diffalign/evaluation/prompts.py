"""Prompt lists for generation and evaluation: plain text, CSV or JSONL files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..paths import resolve_local

PROMPT_KEYS = ("prompt", "caption", "Prompt", "text")


def load_prompts(path: str | Path) -> list[str]:
    """Read prompts: `.txt` one per line (blank lines and `#` comments skipped), `.csv`/`.tsv` or
    `.jsonl` with a `prompt` (or `caption`/`text`) column."""
    local = resolve_local(path)
    if local is None:
        raise FileNotFoundError(f"prompt file {path} not found")
    suffix = local.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with local.open(newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        return [_pick(row, f"{local} row {i + 2}") for i, row in enumerate(rows)]
    if suffix == ".jsonl":
        prompts = []
        for i, line in enumerate(local.read_text().splitlines()):
            if line.strip():
                prompts.append(_pick(json.loads(line), f"{local} line {i + 1}"))
        return prompts
    lines = [line.strip() for line in local.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _pick(row: dict, where: str) -> str:
    for key in PROMPT_KEYS:
        if key in row and row[key] is not None:
            return str(row[key])
    raise ValueError(f"{where}: no prompt column (expected one of {', '.join(PROMPT_KEYS)}; found {', '.join(row)})")

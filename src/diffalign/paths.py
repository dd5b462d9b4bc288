"""Locating the embedded assets and telling local paths from hub ids."""

from __future__ import annotations

from pathlib import Path

# src/diffalign/paths.py -> the project root of a source checkout (where assets/ lives).
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def resolve_local(path: str | Path) -> Path | None:
    """`path` as given if it exists, else relative to the project root (for `assets/...`), else None."""
    candidate = Path(path).expanduser()
    if candidate.exists():
        return candidate
    if not candidate.is_absolute() and (PROJECT_ROOT / candidate).exists():
        return PROJECT_ROOT / candidate
    return None


def looks_local(path: str) -> bool:
    """Whether a string is meant as a filesystem path rather than a hub id such as `org/name`."""
    return path.startswith((".", "/", "~")) or path.count("/") != 1 or Path(path).suffix != ""

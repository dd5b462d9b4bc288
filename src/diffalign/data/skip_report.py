"""The rows skipped during training because an image would not decode, as a JSON-lines file.

Each line: {"row": source row index, "ranking_id": ... (if the table has it), "column": "jpg_1",
"error": "..."}. Every reading process (and DataLoader worker) appends its own lines with single
`write` calls on a file opened in append mode, so lines from several processes do not interleave;
a process writes each bad row once, so a row may appear once per process. `read_skipped` counts
distinct rows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SKIP_FILE = "skipped_rows.jsonl"


class SkipReport:
    """Appends skipped rows to `path` (None: only counts them in memory)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self.rows: set[int] = set()

    def record(self, row: int, column: str, error: str, ranking_id: int | None = None) -> None:
        """Note that source row `row` was skipped because `column` would not decode."""
        if row in self.rows:
            return
        self.rows.add(row)
        if self.path is None:
            return
        entry: dict = {"row": row, "column": column, "error": error}
        if ranking_id is not None:
            entry["ranking_id"] = ranking_id
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode())
        finally:
            os.close(fd)

    def __getstate__(self) -> dict:  # each DataLoader worker keeps its own memory of what it wrote
        return {**self.__dict__, "rows": set()}


def read_skipped(path: str | Path) -> list[dict]:
    """The distinct skipped rows listed in a skip file (first entry of each row), [] if there is none."""
    path = Path(path)
    if not path.is_file():
        return []
    out: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            out.setdefault(entry["row"], entry)
    return list(out.values())

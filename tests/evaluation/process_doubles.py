"""A job's main process among 2, in one test process: its partner does nothing and reports finished at once, so
the main process draws or scores its own share only and its merge finds the partner's share missing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from diffalign.processes import STATUS_DIR, Processes


def main_of_two(phases: list[tuple[Path, str]], before: Callable[[], None] | None = None) -> Processes:
    """Process 0 of 2 whose partner, at every barrier, first runs `before` (writing what it would have written),
    then reports each (folder, phase) of `phases` finished having done nothing."""

    def partner() -> None:
        if before is not None:
            before()
        for folder, phase in phases:
            status = Path(folder) / STATUS_DIR / f"{phase}-00001.json"
            status.parent.mkdir(parents=True, exist_ok=True)
            status.write_text(json.dumps({"done": 0, "state": "finished", "error": None}))

    return Processes(0, 2, 0, partner)

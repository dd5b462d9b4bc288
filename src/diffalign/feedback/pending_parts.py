"""The resumable writer of `diffalign pairs`: one pending part per prompt, gathered into shards.

Each prompt's pairs are written atomically to `OUT/.pending/prompt-<i>.part` (parquet, the prompt's
stats in the schema metadata) as soon as they exist, and gathered into shards of about `shard_size`
rows (whole prompt groups); `progress.json` records the prompts whose pairs are in shards (see
`data.resume`), so a crash between any two steps loses and duplicates nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.pairs import encode_png, write_pair_table
from ..files import atomic_write
from ..data.resume import from_ranges, save_progress, shard_name, to_ranges

PENDING_DIR = ".pending"


def _part_path(out: Path, index: int) -> Path:
    return out / PENDING_DIR / f"prompt-{index:08d}.part"


def write_part(out: Path, index: int, rows: dict[str, list], stats: dict) -> Path:
    """Write one prompt's pairs (images as PNG bytes) and its stats atomically as a pending part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = dict(rows)
    for key in ("jpg_0", "jpg_1"):
        columns[key] = [im if isinstance(im, bytes) else encode_png(im) for im in columns[key]]
    table = pa.table(columns).replace_schema_metadata({"diffalign": json.dumps(stats)})
    return atomic_write(_part_path(out, index), lambda file: pq.write_table(table, file))


def pending_prompts(out: Path) -> set[int]:
    """Indices of the prompts whose pairs wait in pending parts."""
    return {_prompt_of(path) for path in (out / PENDING_DIR).glob("prompt-*.part")}


def _prompt_of(path: Path) -> int:
    return int(path.stem.split("-")[1])


def _read_part(path: Path) -> tuple[dict[str, list], dict]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    stats = json.loads((table.schema.metadata or {}).get(b"diffalign", b"{}"))
    return table.to_pydict(), stats


def _add_stats(totals: dict, stats: dict) -> None:
    for key, value in stats.items():
        totals[key] = totals.get(key, 0) + value


def flush_parts(out: Path, state: dict, shard_size: int, final: bool) -> None:
    """Gather pending parts (in prompt order) into shards of about `shard_size` rows (whole prompts;
    with `final`, the remainder too), each written before `progress.json` names it."""
    done = from_ranges(state.setdefault("done", []))
    parts = []
    for path in sorted((out / PENDING_DIR).glob("prompt-*.part")):
        if _prompt_of(path) in done:  # recorded before a crash kept it from being deleted
            path.unlink()
        else:
            parts.append(path)
    import pyarrow.parquet as pq

    batch: list[Path] = []
    rows = 0
    for n, path in enumerate(parts):
        batch.append(path)
        rows += pq.read_metadata(path).num_rows
        if rows >= shard_size or (final and n == len(parts) - 1):
            _write_shard(out, state, batch)
            batch, rows = [], 0


def _write_shard(out: Path, state: dict, parts: list[Path]) -> None:
    merged: dict[str, list] = {}
    totals = state.setdefault("totals", {})
    for path in parts:
        rows, stats = _read_part(path)
        _add_stats(totals, stats)
        if not rows or not len(next(iter(rows.values()))):
            continue
        for key, values in rows.items():
            merged.setdefault(key, []).extend(values)
    if merged:
        name = shard_name(len(state["shards"]))
        write_pair_table(out / name, merged)
        state["shards"].append({"file": name, "rows": len(merged["caption"])})
    indices = [_prompt_of(p) for p in parts]
    state["done"] = to_ranges(sorted(from_ranges(state["done"]) | set(indices)))
    save_progress(out, state)
    for path in parts:
        path.unlink()

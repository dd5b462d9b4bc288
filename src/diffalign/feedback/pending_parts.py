"""The resumable writer of `diffalign pairs`: one pending part per prompt, gathered into shards.

Each prompt's pairs are written atomically to `OUT/.pending/prompt-<i>.part` (parquet, the prompt's
stats and the job's settings in the schema metadata) as soon as they exist, and gathered into shards of
about `shard_size` rows (whole prompt groups); `progress.json` records the prompts whose pairs are in
shards (see `data.resume`), so a crash between any two steps loses and duplicates nothing.

Shards gather the parts in prompt order, from the first prompt not in a shard and without a gap (a
missing part is one a slower process will still write), so they are the same whichever process drew
which prompt and whenever they were gathered. A part drawn with other settings is refused, naming what
changed.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.pairs import encode_png, write_pair_table
from ..files import atomic_write
from ..data.resume import from_ranges, save_progress, shard_name, to_ranges

PENDING_DIR = ".pending"
_STATS_KEY, _SETTINGS_KEY = b"diffalign", b"diffalign_settings"


def _part_path(out: Path, index: int) -> Path:
    return out / PENDING_DIR / f"prompt-{index:08d}.part"


def write_part(out: Path, index: int, rows: dict[str, list], stats: dict, settings: dict | None = None) -> Path:
    """Write one prompt's pairs (images as PNG bytes), its stats and the job's `settings` atomically as a
    pending part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = dict(rows)
    for key in ("jpg_0", "jpg_1"):
        columns[key] = [im if isinstance(im, bytes) else encode_png(im) for im in columns[key]]
    metadata = {_STATS_KEY: json.dumps(stats)}
    if settings is not None:
        metadata[_SETTINGS_KEY] = json.dumps(settings, sort_keys=True)
    table = pa.table(columns).replace_schema_metadata(metadata)
    return atomic_write(_part_path(out, index), lambda file: pq.write_table(table, file))


def pending_prompts(out: Path, settings: dict | None = None) -> set[int]:
    """Indices of the prompts whose pairs wait in pending parts; with `settings`, a part drawn with other
    settings raises a ValueError naming the part and what changed."""
    paths = sorted((out / PENDING_DIR).glob("prompt-*.part"))
    if settings is not None:
        import pyarrow.parquet as pq

        for path in paths:
            _check_settings(path, pq.read_schema(path).metadata, settings)
    return {_prompt_of(path) for path in paths}


def _prompt_of(path: Path) -> int:
    return int(path.stem.split("-")[1])


def _check_settings(path: Path, metadata: dict | None, settings: dict) -> None:
    text = (metadata or {}).get(_SETTINGS_KEY)
    there = json.loads(text) if text else {}
    differing = sorted(k for k in set(there) | set(settings) if there.get(k) != settings.get(k))
    if not differing:
        return
    key = differing[0]
    what = (f"{key}: {there.get(key)!r} there, {settings.get(key)!r} now"
            f"{'; also ' + ', '.join(differing[1:]) if differing[1:] else ''}") if there else "no settings recorded"
    raise ValueError(
        f"{path}: a pending part drawn with other settings ({what}): use the same settings to resume, another "
        "output folder, or --overwrite to start over"
    )


def _read_part(path: Path) -> tuple[dict[str, list], dict]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    stats = json.loads((table.schema.metadata or {}).get(_STATS_KEY, b"{}"))
    return table.to_pydict(), stats


def _add_stats(totals: dict, stats: dict) -> None:
    for key, value in stats.items():
        totals[key] = totals.get(key, 0) + value


def flush_parts(out: Path, state: dict, shard_size: int, final: bool, limit: int | None = None,
                settings: dict | None = None) -> None:
    """Gather the pending parts that follow the prompts in shards without a gap (in prompt order, below
    `limit` if given) into shards of about `shard_size` rows (whole prompts; with `final`, the remainder
    too), each written before `progress.json` names it. With `settings`, a part drawn with others raises."""
    done = from_ranges(state.setdefault("done", []))
    present = {}
    for path in sorted((out / PENDING_DIR).glob("prompt-*.part")):
        if _prompt_of(path) in done:  # recorded before a crash kept it from being deleted
            path.unlink()
        else:
            present[_prompt_of(path)] = path
    parts, index = [], 0
    while limit is None or index < limit:
        if index in present:
            parts.append(present[index])
        elif index not in done:
            break  # not drawn yet: the parts after it wait for it
        index += 1
    import pyarrow.parquet as pq

    if settings is not None:  # before anything is written: a foreign part stops the flush, not half of it
        for path in parts:
            _check_settings(path, pq.read_schema(path).metadata, settings)
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

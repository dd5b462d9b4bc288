"""Per-image score files: CSV, JSON, JSONL or parquet by the file's suffix, written atomically.

Rows hold `file`, for pair tables `row` and `image`, `prompt`, one column per scorer (empty/null
where that scorer failed) and `error`. CSV and JSONL hold the rows only; JSON is an object
`{"scorers": {name: summary with its scale}, "rows": [...]}`; parquet keeps the same summaries in
its schema metadata (key `diffalign.scorers`), so the units travel with the scores.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

from ..files import atomic_save

FORMATS = (".csv", ".json", ".jsonl", ".parquet")
TEXT_COLUMNS = ("file", "image", "prompt", "error")
METADATA_KEY = b"diffalign.scorers"


def output_format(path: str | Path, allowed: Sequence[str] = FORMATS) -> str:
    """The format (suffix) of an output path; a ValueError names the suffixes it may have."""
    suffix = Path(path).suffix.lower()
    if suffix not in allowed:
        raise ValueError(f"--out {path}: unknown output type {suffix or '(no suffix)'!r}; end the name with {', '.join(allowed)}")
    return suffix


def _json_safe(value: object) -> object:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_atomically(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file and a rename: a crash never leaves half a file."""
    path = Path(path)

    def write(tmp_dir: Path) -> Path:
        (tmp_dir / path.name).write_bytes(data)
        return tmp_dir / path.name

    return atomic_save(path.parent, write)


def encode_rows(columns: Sequence[str], rows: Sequence[dict], fmt: str, scorers: dict | None = None) -> bytes:
    """The bytes of a score file of format `fmt` (a suffix of FORMATS); `scorers` is the per-scorer summary."""
    if fmt == ".csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else repr(row[c]) if isinstance(row[c], float) else row[c]
                             for c in columns])
        return buffer.getvalue().encode("utf-8")
    if fmt == ".jsonl":
        lines = [json.dumps({c: _json_safe(row.get(c)) for c in columns}, ensure_ascii=False) for row in rows]
        return ("\n".join(lines) + "\n" if lines else "").encode("utf-8")
    if fmt == ".json":
        document = {"scorers": scorers or {}, "rows": [{c: _json_safe(row.get(c)) for c in columns} for row in rows]}
        return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    if fmt == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        types = {c: pa.string() if c in TEXT_COLUMNS else pa.int64() if c == "row" else pa.float64() for c in columns}
        schema = pa.schema([(c, types[c]) for c in columns], metadata={METADATA_KEY: json.dumps(scorers or {})})
        table = pa.table({c: [_json_safe(row.get(c)) for row in rows] for c in columns}, schema=schema)
        sink = io.BytesIO()
        pq.write_table(table, sink)
        return sink.getvalue()
    raise ValueError(f"unknown score file format {fmt!r}; use one of {', '.join(FORMATS)}")


def write_scores(path: str | Path, columns: Sequence[str], rows: Sequence[dict], scorers: dict | None = None) -> Path:
    """Write per-image rows to `path` in the format of its suffix, atomically; return the path."""
    return write_atomically(path, encode_rows(columns, rows, output_format(path), scorers))


def read_scores(path: str | Path) -> list[dict]:
    """Read the rows of a score file back: scores as floats (None where missing), `row` as int.

    CSV cannot tell an empty prompt from a missing one; both read back as "" (a missing prompt
    always comes with an error).
    """
    path = Path(path)
    fmt = output_format(path)
    if fmt == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if fmt == ".json":
        return json.loads(text)["rows"]
    if fmt == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    rows = []
    for raw in csv.DictReader(io.StringIO(text)):
        row: dict[str, object] = {}
        for key, value in raw.items():
            if value == "":
                row[key] = "" if key == "prompt" else None
            elif key in TEXT_COLUMNS:
                row[key] = value
            else:
                row[key] = int(value) if key == "row" else float(value)
        rows.append(row)
    return rows


def read_scorer_summaries(path: str | Path) -> dict:
    """The per-scorer summaries (scale, n, mean...) stored in a JSON or parquet score file; {} for CSV/JSONL."""
    path = Path(path)
    fmt = output_format(path)
    if fmt == ".json":
        return json.loads(path.read_text(encoding="utf-8"))["scorers"]
    if fmt == ".parquet":
        import pyarrow.parquet as pq

        metadata = pq.read_schema(path).metadata or {}
        return json.loads(metadata.get(METADATA_KEY, b"{}"))
    return {}

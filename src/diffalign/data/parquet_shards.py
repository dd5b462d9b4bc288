"""Checking the parquet files of a pair table before `datasets` reads them.

`datasets.load_dataset("parquet", ...)` fails with a long traceback on a file that is not parquet, and
on a valid file without rows ("BatchSize must be greater than 0" with pyarrow 26): such a file is
left out here (earlier versions of `diffalign relabel` wrote one for a shard whose rows were all left
out), a file that is not parquet is an error naming it, and so is a table whose every file is empty.
"""

from __future__ import annotations

from collections.abc import Sequence


def parquet_rows(file: str) -> int:
    """The number of rows in a parquet file, read from its footer; a ValueError names a file that is not parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(file).num_rows
    except pa.ArrowInvalid as error:
        raise ValueError(f"{file}: not a readable parquet file ({error})") from error


def readable_parquet_files(files: Sequence[str], source: str) -> list[str]:
    """The files of `files` (the parquet files of data path `source`) that hold rows.

    Raises a ValueError naming a file that is not parquet, or `source` and its files when none holds a row."""
    kept = [file for file in files if parquet_rows(file) > 0]
    if not kept:
        if len(files) == 1:
            which = "the parquet file is empty" if files[0] == source else f"its parquet file {files[0]} is empty"
        else:
            shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
            which = f"none of its {len(files)} parquet files has a row: {shown}"
        raise ValueError(f"{source}: no rows to read ({which})")
    return kept

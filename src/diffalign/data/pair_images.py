"""Loading the two images of each pair-table row one at a time, when they are needed."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import datasets
from PIL import Image

from .pairs import decode_image

IMAGE_COLUMNS = ("jpg_0", "jpg_1")


def load_pair_image(column: datasets.Dataset, row: int, key: str, where: str) -> Image.Image:
    """Image `key` ("jpg_0" or "jpg_1") of `row` as RGB; `column` holds that image column of the table.

    An undecodable image raises a ValueError that starts with `where` (e.g. `pairs.parquet row 3 jpg_1`).
    """
    data = column[row][key]
    if isinstance(data, Image.Image):  # a table whose schema declares an Image feature arrives decoded
        return data.convert("RGB")
    return decode_image(data, where).convert("RGB")


class PairImages(Sequence[Callable[[], Image.Image]]):
    """A loader for both images of every row: item 2 x row + k loads `jpg_k` of `row`, decoded only when called.

    The loaders are made on demand, so a table of millions of rows costs no memory up front; a
    loader's error names `source` (a path), the row and the column.
    """

    def __init__(self, table: datasets.Dataset, source: str = "") -> None:
        self._columns = {key: table.select_columns([key]) for key in IMAGE_COLUMNS}
        self._prefix = f"{source} " if source else ""
        self._rows = len(table)

    def __len__(self) -> int:
        return 2 * self._rows

    def locate(self, index: int) -> tuple[int, str]:
        """(row, column) of item `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"image {index} of a table of {self._rows} rows")
        return index // 2, IMAGE_COLUMNS[index % 2]

    def where(self, index: int) -> str:
        """Item `index` named for messages: `source row N jpg_K`."""
        row, key = self.locate(index)
        return f"{self._prefix}row {row} {key}"

    def __getitem__(self, index: int) -> Callable[[], Image.Image]:  # type: ignore[override]
        row, key = self.locate(index)
        return functools.partial(load_pair_image, self._columns[key], row, key, self.where(index))

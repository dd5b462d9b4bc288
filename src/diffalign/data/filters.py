"""Which rows of a Pick-a-Pic-schema table become training pairs, and a count of why the others did not.

Rules, applied in this order to each row (the first that matches names the reason):

- `other_subset`: with `validation_fraction` > 0, the caption's side of the train/validation split
  (`caption_subset`) is not the requested `subset`. Every row of a caption falls on one side.
- `tie`: `label_0` == 0.5 (Diffusion-DPO drops these; training on them would teach noise).
- `invalid_label`: `label_0` missing or anything else than 0, 1 or 0.5.
- `not_different` (opt-in, `require_different`): `are_different` is False.
- `identical_images` (opt-in, `dedupe`): `jpg_0` and `jpg_1` hold the same bytes.
- `duplicate` (opt-in, `dedupe`): the same caption with the same two images (either order) as an
  earlier kept row. Images are compared by the SHA-1 of their encoded bytes, so re-encoded copies of
  one picture are not caught; the check reads every image once (a full pass over the data).

One `PairFilter` holds the dedupe memory, so the map-style table and the streaming reader apply the
same rules with the same result for the same row order.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

REASONS = ("other_subset", "tie", "invalid_label", "not_different", "identical_images", "duplicate")
SUBSETS = ("train", "validation")


def caption_subset(caption: str | None, validation_fraction: float) -> str:
    """'validation' or 'train' for a caption: a stable hash (SHA-256 of its UTF-8 bytes) compared with
    `validation_fraction`, the same in every run, process and reading order."""
    if validation_fraction <= 0:
        return "train"
    digest = hashlib.sha256((caption or "").encode("utf-8")).digest()
    return "validation" if int.from_bytes(digest[:8], "big") / 2**64 < validation_fraction else "train"


def _bytes(image: Any) -> bytes:
    if isinstance(image, dict):
        image = image.get("bytes")
    return image or b""


@dataclass
class FilterReport:
    """How many rows were read, kept and dropped (by reason), and how many kept rows have an empty caption
    or none (they train unconditionally); rows beyond `max_pairs` are not counted."""

    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    empty_captions: int = 0
    missing_captions: int = 0

    @property
    def total_dropped(self) -> int:
        """Rows dropped for any reason."""
        return sum(self.dropped.values())

    def count_caption(self, caption: Any) -> None:
        """Count a kept row's caption if it is missing (None) or empty (nothing but white space)."""
        if caption is None:
            self.missing_captions += 1
        elif not str(caption).strip():
            self.empty_captions += 1

    def recount_captions(self, captions: Iterable[Any]) -> None:
        """Count the captions of the kept rows anew (after `max_pairs` cut the kept rows short)."""
        self.empty_captions = self.missing_captions = 0
        for caption in captions:
            self.count_caption(caption)

    def captions_note(self) -> str:
        """How many kept rows have an empty caption or none ('' when every caption has text)."""
        if not (self.empty_captions or self.missing_captions):
            return ""
        return (f"{self.empty_captions} with an empty caption, {self.missing_captions} with no caption "
                "(trained unconditionally, as data.empty_prompt_prob does on purpose)")

    def describe(self) -> str:
        """One line: rows read, kept, each non-zero drop reason, and the kept rows without caption text."""
        reasons = ", ".join(f"{self.dropped[r]} {r}" for r in REASONS if self.dropped.get(r))
        line = f"{self.read} rows read, {self.kept} kept, {self.total_dropped} dropped ({reasons or 'none'})"
        note = self.captions_note()
        return f"{line}; {note}" if note else line


class PairFilter:
    """The keep/drop decision for rows in order (stateful only with `dedupe`), counted in `report`."""

    def __init__(
        self,
        *,
        require_different: bool = False,
        dedupe: bool = False,
        validation_fraction: float = 0.0,
        subset: str = "train",
    ) -> None:
        if subset not in SUBSETS:
            raise ValueError(f"data.subset must be one of {list(SUBSETS)}, got {subset!r}")
        if not 0.0 <= validation_fraction < 1.0:
            raise ValueError(f"data.validation_fraction must be in [0, 1), got {validation_fraction}")
        if subset == "validation" and validation_fraction == 0:
            raise ValueError("data.subset=validation needs data.validation_fraction > 0 (0 puts every caption in train)")
        self.require_different, self.dedupe = require_different, dedupe
        self.validation_fraction, self.subset = validation_fraction, subset
        self.seen: set[bytes] = set()
        self.report = FilterReport()

    def explain_empty(self) -> str:
        """Why no row was kept: the data had none, or how many rows each rule (and the data.* key behind it) dropped."""
        report = self.report
        if report.read == 0:
            return "the data holds no rows"
        causes = {
            "other_subset": f"{{}} by data.validation_fraction={self.validation_fraction} (their captions are not in "
                            f"data.subset={self.subset})",
            "tie": "{} ties (label_0 = 0.5, always dropped)",
            "invalid_label": "{} with an invalid label (label_0 not 0, 1 or 0.5)",
            "not_different": "{} by data.require_different (are_different is false)",
            "identical_images": "{} by data.dedupe (two identical images)",
            "duplicate": "{} by data.dedupe (repeats of an earlier pair)",
        }
        dropped = "; ".join(causes[r].format(report.dropped[r]) for r in REASONS if report.dropped.get(r))
        return f"all {report.read} rows were dropped: {dropped}"

    @property
    def needs_images(self) -> bool:
        """Whether the decision reads `jpg_0`/`jpg_1` (only for dedupe)."""
        return self.dedupe

    def reason(self, row: dict) -> str | None:
        """Why `row` is dropped (one of `REASONS`), or None to keep it; counts it in `report`."""
        why = self._reason(row)
        self.report.read += 1
        if why is None:
            self.report.kept += 1
            self.report.count_caption(row.get("caption"))
        else:
            self.report.dropped[why] += 1
        return why

    def _reason(self, row: dict) -> str | None:
        caption = row.get("caption")
        if self.validation_fraction > 0 and caption_subset(caption, self.validation_fraction) != self.subset:
            return "other_subset"
        label = row.get("label_0")
        if label == 0.5:
            return "tie"
        if label not in (0, 1):
            return "invalid_label"
        if self.require_different and row.get("are_different") is False:
            return "not_different"
        if self.dedupe:
            a, b = (hashlib.sha1(_bytes(row.get(f"jpg_{k}"))).digest() for k in (0, 1))
            if a == b:
                return "identical_images"
            key = hashlib.sha1((caption or "").encode("utf-8") + min(a, b) + max(a, b)).digest()
            if key in self.seen:
                return "duplicate"
            self.seen.add(key)
        return None

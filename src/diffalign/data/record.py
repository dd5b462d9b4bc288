"""The one record of preference data: a batch of pairs, winner first, at every stage of its way to the UNet.

Readers (a decoded table, a stream, the latent cache) fill what they have: pixels, or cached VAE
posterior moments and text conditioning. Encoding (`training.encode.encode_batch`) fills the latents,
the conditioning the method asked for and SDXL's time ids. Methods read the encoded fields:

    batch.captions           list[str] (B)       the prompt of each pair
    batch.w, batch.l         Side                winner and loser (l is None for winners-only data)
    batch.weight             (B,) float or None  per-pair loss weight (a table's `weight` column; SmPO's
                                                 γ(2p − 1), KTO's rated rows +1 desirable / −1 undesirable)
    batch.prompt_cond        TextConditioning    cached conditioning of the prompts (cache readers only)
    side.own_captions        list[str] (B)       each image's own caption (caption_0/1), else the prompt
    side.pixels              (B, 3, R, R)        images in [-1, 1] (image readers)
    side.mean, side.std      (B, 4, r, r)        VAE posterior moments (cache reader)
    side.own_cond            TextConditioning    cached conditioning of own_captions, where they differ
    side.original_sizes      (B, 2) int          (height, width) before resizing (SDXL micro-conditioning)
    side.crops               (B, 2) int          (top, left) of the crop
    side.latents             (B, 4, r, r)        encoded: scaled VAE latents
    side.cond                TextConditioning    encoded: what conditions this side's UNet calls
    side.time_ids            (B, 6) or None      encoded: SDXL time ids
    side.seeds               list[int] (B)       generated images (SePPO's reference samples): each one's seed

`pair_fields(row)` is the one place that turns a table row into a pair's labels, captions and weight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..models.conditioning import TextConditioning

DUAL_CAPTION_COLUMNS = ("caption_0", "caption_1")
WEIGHT_COLUMN = "weight"


@dataclass
class Side:
    """One side (all winners or all losers) of a batch of pairs; see the module docstring for shapes."""

    own_captions: list[str]
    pixels: torch.Tensor | None = None
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    own_cond: TextConditioning | None = None
    original_sizes: torch.Tensor | None = None
    crops: torch.Tensor | None = None
    latents: torch.Tensor | None = None
    cond: TextConditioning | None = None
    time_ids: torch.Tensor | None = None
    seeds: list[int] | None = None


@dataclass
class PairBatch:
    """A batch of preference pairs, winner first; see the module docstring for the fields."""

    captions: list[str]
    w: Side
    l: Side | None = None  # noqa: E741 (the papers' name)
    weight: torch.Tensor | None = None
    prompt_cond: TextConditioning | None = None

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def loser(self) -> Side:
        """The losers; a clear error for winners-only data."""
        if self.l is None:
            raise ValueError("this method needs a rejected image per pair, but the data holds winners only")
        return self.l


@dataclass
class PairFields:
    """What a table row says about its pair: which image won, the captions and the weight."""

    winner: int  # 0 or 1: the column index (jpg_0 / jpg_1) of the preferred image
    caption: str
    own_captions: tuple[str, str]  # (winner's, loser's)
    weight: float | None

    @property
    def order(self) -> tuple[int, int]:
        """Column indices (winner, loser)."""
        return self.winner, 1 - self.winner


def pair_fields(row: Mapping[str, Any]) -> PairFields:
    """The pair a decided row describes: `label_0 == 1` means jpg_0 won; per-image captions from
    caption_0/caption_1 where present (else the prompt); the per-pair `weight` column if the table has one."""
    winner = 0 if row["label_0"] == 1 else 1
    caption = row["caption"] or ""
    own = tuple(row.get(f"caption_{k}") or caption for k in (winner, 1 - winner))
    weight = row.get(WEIGHT_COLUMN)
    return PairFields(winner, caption, own, None if weight is None else float(weight))  # type: ignore[arg-type]


def collate_items(items: Sequence[dict]) -> PairBatch:
    """Stack reader items into a `PairBatch`.

    An item is `{"fields": PairFields, "w": {...}, "l": {...}}`, each side a dict of tensors named as the
    `Side` fields (pixels, mean, std, original_sizes, crops); tuples become integer tensors.
    """
    fields_ = [it["fields"] for it in items]
    sides: dict[str, Side] = {}
    for k, name in enumerate(("w", "l")):
        if name not in items[0]:
            continue
        stacked = {}
        for key, value in items[0][name].items():
            values = [it[name][key] for it in items]
            stacked[key] = torch.stack(values) if isinstance(value, torch.Tensor) else torch.tensor(values)
        sides[name] = Side(own_captions=[f.own_captions[k] for f in fields_], **stacked)
    weights = [f.weight for f in fields_]
    weight = None if all(x is None for x in weights) else torch.tensor([1.0 if x is None else x for x in weights])
    return PairBatch([f.caption for f in fields_], sides["w"], sides.get("l"), weight)

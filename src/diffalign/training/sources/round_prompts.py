"""The prompts phase of an online round, and the order its units are trained in.

Round r takes the next `rollout.prompts_per_round` prompts of an order that is a seeded permutation of the
prompt list per pass over it (`train.seed`), so a round's prompts are a function of the round alone; each
process samples a contiguous share of them. Each pass (inner epoch) over a round visits its units in the
order they were sampled, or in a seeded random order per (round, pass) with `rollout.shuffle`; global
micro-batch j takes the units j·B·W … (j+1)·B·W − 1 of that order and process r the r-th B of them, so a run
on W processes with batch B trains what a run on one process with batch B·W trains.
"""

from __future__ import annotations

import torch

from ...data.order import derive_seed


def prompt_order(count: int, seed: int, round_: int, per_round: int) -> list[int]:
    """Indices into the prompt list of round `round_`'s prompts: consecutive slices of a seeded permutation
    per pass over the list (a pass that runs out continues into the next permutation)."""
    out: list[int] = []
    position = round_ * per_round
    while len(out) < per_round:
        epoch, offset = divmod(position, count)
        permutation = torch.randperm(count, generator=torch.Generator().manual_seed(derive_seed(seed, epoch, 0xB0)))
        take = min(per_round - len(out), count - offset)
        out.extend(permutation[offset : offset + take].tolist())
        position += take
    return out


def process_share(items: list, rank: int, world: int) -> list:
    """Process `rank`'s contiguous share of `items` (whose length is a multiple of `world`)."""
    share = len(items) // world
    return items[rank * share : (rank + 1) * share]


def epoch_order(units: int, seed: int, round_: int, epoch: int, shuffle: bool) -> list[int]:
    """The order pass `epoch` over round `round_` visits its `units` units in: as sampled, or (shuffle) a
    permutation seeded by (seed, round, pass)."""
    if not shuffle:
        return list(range(units))
    generator = torch.Generator().manual_seed(derive_seed(seed, round_, epoch, 0xE90C))
    return torch.randperm(units, generator=generator).tolist()


def micro_batch_units(order: list[int], index: int, batch: int, rank: int, world: int) -> list[int]:
    """The units process `rank` trains in micro-batch `index` of a pass visiting `order`."""
    start = (index * world + rank) * batch
    return order[start : start + batch]

"""The order in which a run visits its pairs: a seeded permutation per epoch, split over processes.

Stateless by design: the batches of epoch e are a function of (seed, e) alone, and a process's share
of a global batch is a fixed slice of it. A resumed run starts at any micro-step without reading the
pairs it already consumed, and N processes with batch b see exactly the pairs of one process with
batch N*b.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


def derive_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integer keys (numpy's SeedSequence: no collisions between nearby keys)."""
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys] + [len(keys)]).generate_state(2, np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


class EpochBatches(torch.utils.data.Sampler):
    """Batches of `(epoch, index)` keys for one process, from global micro-step `start` on, for ever.

    Global batch k of epoch e is `perm_e[k*G:(k+1)*G]` with G = batch_size * world and perm_e a
    permutation seeded by (seed, e); this process takes its `batch_size` keys at offset rank*batch_size.
    The incomplete last global batch of an epoch is dropped. The dataset receives the epoch with each
    index so that its own random choices (crop, flip) are seeded per (epoch, index), too.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, start: int = 0) -> None:
        self.global_batch = batch_size * world
        if num_items < self.global_batch:
            raise ValueError(
                f"{num_items} pairs cannot fill one global batch of {self.global_batch} "
                f"({batch_size} pairs x {world} process(es)); lower train.batch_size"
            )
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world, self.start = rank, world, start

    @property
    def batches_per_epoch(self) -> int:
        """Global batches in one pass over the data."""
        return self.num_items // self.global_batch

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of epoch `epoch`."""
        return torch.randperm(self.num_items, generator=torch.Generator().manual_seed(derive_seed(self.seed, epoch)))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, batch = divmod(self.start, self.batches_per_epoch)
        while True:
            perm = self.permutation(epoch).tolist()
            for k in range(batch, self.batches_per_epoch):
                offset = k * self.global_batch + self.rank * self.batch_size
                yield [(epoch, i) for i in perm[offset : offset + self.batch_size]]
            epoch, batch = epoch + 1, 0

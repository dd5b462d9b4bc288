"""Random draws of a training micro-step that do not depend on how its batch is split over processes.

Every draw (the noise of the VAE posterior, the empty-caption coin, the diffusion noise and timestep)
is made for the whole global micro-batch, all processes' pairs, from a CPU generator seeded by
(seed, micro-step, draw number); each process keeps the rows of its own pairs. So one process with a
batch of 2b pairs and two processes with b pairs each see the same noise for the same pair, and a
resumed run draws what the uninterrupted run would have drawn, with no generator state to restore.
"""

from __future__ import annotations

import torch

from ..data.order import derive_seed


class BatchRandom:
    """The random draws of one micro-step for this process's `pairs` pairs (global batch = pairs x world).

    Each method draws for the global batch and returns this process's rows, first dim = `pairs`.
    """

    def __init__(self, seed: int, micro_step: int, pairs: int, rank: int = 0, world: int = 1,
                 device: torch.device | str = "cpu") -> None:
        self.seed, self.micro_step = seed, micro_step
        self.pairs, self.rank, self.world = pairs, rank, world
        self.device = torch.device(device)
        self._draws = 0

    def _generator(self) -> torch.Generator:
        self._draws += 1
        return torch.Generator().manual_seed(derive_seed(self.seed, self.micro_step, self._draws))

    def _mine(self, global_draw: torch.Tensor) -> torch.Tensor:
        start = self.rank * self.pairs
        return global_draw[start : start + self.pairs].to(self.device)

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normal, (pairs, *shape): one draw per pair."""
        return self._mine(torch.randn((self.world * self.pairs, *shape), generator=self._generator()))

    def rand(self, *shape: int) -> torch.Tensor:
        """Uniform on [0, 1), (pairs, *shape)."""
        return self._mine(torch.rand((self.world * self.pairs, *shape), generator=self._generator()))

    def skip(self) -> None:
        """Use up one draw number without drawing, so the draws after it are numbered as when it is made
        (a winners-only batch skips the loser's posterior noise and then draws what a pair batch draws)."""
        self._draws += 1

    def seeds(self) -> list[int]:
        """One integer seed per pair (for a sampler's per-image generators), a function of the run's seed,
        the micro-step, this draw's number and the pair's global position only."""
        draw = self._draws = self._draws + 1
        start = self.rank * self.pairs
        return [derive_seed(self.seed, self.micro_step, draw, start + i) for i in range(self.pairs)]

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        """Integers uniform in [0, high), (pairs, *shape)."""
        return self._mine(torch.randint(0, high, (self.world * self.pairs, *shape), generator=self._generator()))

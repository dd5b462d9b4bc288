"""The interface of a batch source, which is all the training loop knows about its data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from ..randomness import BatchRandom


class BatchSource(Protocol):
    """Supplies the micro-batches of a run and saves its own position in checkpoints.

    `batches(micro)` yields this process's raw micro-batches from global micro-step `micro` on, without
    end; `prepare(raw, rand)` turns one into the method's input (encoding, on the device), drawing from
    the micro-step's `rand` first. `save(folder, rank)` / `restore(folder, rank)` (every process calls them) write and read what the source
    needs beyond the micro-step to resume exactly (nothing for offline pairs; the prompt order, round
    and current rollouts for an online source). A source that samples with the models of the run also
    has `attach(policy, reference, autocast)`, called once they are built.
    """

    def describe(self) -> str: ...

    def batches(self, micro: int) -> Iterator[Any]: ...

    def prepare(self, raw: Any, rand: BatchRandom) -> Any: ...

    def save(self, folder: Path, rank: int) -> None: ...

    def restore(self, folder: Path, rank: int) -> None: ...

    def summary(self) -> str | None: ...

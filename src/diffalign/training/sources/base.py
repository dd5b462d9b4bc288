"""The interface of a batch source, which is all the training loop knows about its data.

A method names its source class (`Method.source`); the loop asks that class what the run needs before any
model is loaded (`check`, `reads_latent_cache`, `replayable`, `compile_conflict`), builds it with `build`, and
then only calls the hooks below, whose defaults do nothing: it never asks what kind of source it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ...config.schema import RunConfig
from ...models.loading import DiffusionParts
from ..randomness import BatchRandom


@dataclass
class SourceContext:
    """What a source may build itself from: the run's config and method, its models, the latent cache (None
    when the source reads none or there is none), the process layout and the run folder."""

    cfg: RunConfig
    method: Any  # the run's `Method`
    parts: DiffusionParts
    cache: Any
    device: torch.device
    rank: int
    world: int
    out_dir: Path
    resuming: bool
    substeps: int = 1
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None  # every process's tensors, concatenated
    main_process_first: Callable[[], AbstractContextManager] = nullcontext
    accelerator: Any = None  # the run's, for collectives beyond `gather` (None: one process, in tests)


class BatchSource:
    """Supplies the micro-batches of a run and saves its own position in checkpoints.

    `batches(micro)` yields this process's raw micro-batches from global micro-step `micro` on, without end;
    `prepare(raw, rand)` turns one into the method's input (encoding, on the device), drawing from the
    micro-step's `rand` first. `save(folder, rank)` / `restore(folder, rank)` (every process calls them) write
    and read what the source needs beyond the micro-step to resume exactly (nothing for offline pairs; the
    round, its rollouts and the inner epoch for an online source). `attach(policy, reference, autocast)` is
    called once the models are built (a source that samples keeps them). `observe(metrics)` sees the method's
    metrics of every micro-step; `summary()` is printed at the end of the run.
    """

    unit: ClassVar[str] = "pairs"  # what one entry of a batch is, for the printed batch arithmetic

    @classmethod
    def build(cls, context: SourceContext) -> BatchSource:
        """The source of a run (see `SourceContext`)."""
        raise NotImplementedError(f"{cls.__name__} does not say how to build itself")

    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        """Refuse settings this source cannot serve, before any model is loaded; by default the rewards and the
        reward-hacking monitor of online rounds, which a source that samples no rounds would silently ignore."""
        for key, value in (("rollout.rewards", cfg.rollout.rewards),
                           ("rollout.monitor.scorers", cfg.rollout.monitor.scorers)):
            if value:
                raise ValueError(f"{key} is read by the methods that sample and judge their own images each round "
                                 f"(online rollouts); objective {cfg.objective.name} does not: remove {key}")

    @classmethod
    def reads_latent_cache(cls, cfg: RunConfig) -> bool:
        """Whether the run should look for the latent cache of its data (then it loads no VAE or text encoder)."""
        del cfg
        return False

    @classmethod
    def replayable(cls, cfg: RunConfig) -> bool:
        """Whether the micro-steps' batches can be replayed before training (the reference-output pre-pass)."""
        del cfg
        return False

    @classmethod
    def compile_conflict(cls, cfg: RunConfig) -> str | None:
        """Why `train.compile` cannot apply to this source (None: it can)."""
        del cfg
        return None

    def attach(self, policy: torch.nn.Module, reference: Any,
               autocast: Callable[[], AbstractContextManager] = nullcontext) -> None:
        """The (unwrapped) UNet being trained, the run's reference and the autocast to run them under."""
        del policy, reference, autocast

    def describe(self) -> str:
        """One or more lines printed at the start of the run."""
        return type(self).__name__

    def batches(self, micro: int) -> Iterator[Any]:
        """This process's raw micro-batches from global micro-step `micro` on, without end (a source that ends them
        ends the run there, saved as at its last step: the online source when the reward-hacking monitor stops it)."""
        raise NotImplementedError

    def prepare(self, raw: Any, rand: BatchRandom) -> Any:
        """A raw micro-batch as the method's input (unchanged by default)."""
        del rand
        return raw

    def observe(self, metrics: dict[str, float]) -> None:
        """The method's metrics of one micro-step (an online source averages them per round)."""
        del metrics

    def save(self, folder: Path, rank: int) -> None:
        """Write what resuming needs beyond the micro-step into a checkpoint folder (nothing by default)."""
        del folder, rank

    def restore(self, folder: Path, rank: int) -> None:
        """Read back what `save` wrote (nothing by default)."""
        del folder, rank

    def summary(self) -> str | None:
        """Printed at the end of the run (None: nothing to say)."""
        return None

"""Winners paired with on-policy reference samples (SePPO): each winner's caption drawn anew by the reference.

The offline source serves winners only (`OfflineWinners`). For each micro-batch, the reference chosen for
this micro-step (a `ReferencePool` member: the loop calls `refresh` before `prepare`) draws one image per
pair from the pair's caption with the DDIM sampler of `rollout.*` (`steps`, `guidance`, `eta`, in chunks of
`sample_batch_size`; `rollout.prompts` and `rollout.resolution` do not apply: the captions are the data's,
the size the winners'), under classifier-free guidance against the family's unconditional input (the empty
caption; zeros for SDXL). The caption conditions the sampler even where `data.empty_prompt_prob` dropped it
for the loss. Pair i's sample starts from the noise of `torch.Generator().manual_seed(seeds[i])`, with
seeds[i] from `BatchRandom.seeds` (a function of train.seed, the micro-step and the pair's global position),
recorded in `batch.l.seeds`: a resumed run, its pool restored, draws the same samples. The sample's final
latent x_0 fills `batch.l` as it is (no decode-encode round trip), conditioned in the loss like its winner
(the same, possibly dropped, caption), with SDXL time ids of a generated image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from ...config.schema import RunConfig
from ...data.record import PairBatch, Side
from ...models.conditioning import TextConditioning, encode_prompts
from ...models.loading import DiffusionParts
from ...sampling.ddim import ddim_scheduler
from ...sampling.guidance import module_device_dtype
from ...sampling.trajectory import default_uncond, generation_time_ids, sample_from_conditioning, unconditional
from ..randomness import BatchRandom
from .base import BatchSource, SourceContext
from .offline import OfflinePairs, OfflineWinners


class ReferenceSampled(BatchSource):
    """Winners of `inner` with a reference sample in each loser slot (see the module docstring)."""

    @classmethod
    def build(cls, context: SourceContext) -> ReferenceSampled:
        """The run's winners (`OfflineWinners`), each paired with a sample of the run's reference."""
        if context.method.reference == "none":
            raise TypeError(f"{type(context.method).__name__}: reference samples need a reference")
        return cls(OfflineWinners.build(context), context.cfg, context.parts, context.device)

    check = OfflineWinners.check
    reads_latent_cache = OfflineWinners.reads_latent_cache
    replayable = OfflineWinners.replayable

    def __init__(self, inner: OfflinePairs, cfg: RunConfig, parts: DiffusionParts, device: torch.device) -> None:
        self.inner, self.cfg, self.parts, self.device = inner, cfg, parts, device
        self.scheduler = ddim_scheduler(parts)
        self.reference: Any = None
        self.dtype: torch.dtype | None = None
        self.autocast: Callable[[], AbstractContextManager] = nullcontext
        self._empty = inner.empty

    def attach(self, policy: torch.nn.Module, reference: Any,
               autocast: Callable[[], AbstractContextManager] = nullcontext) -> None:
        """The run's reference (anything with `predict(sample, t, **unet_kwargs)`) and the autocast to sample under."""
        del policy
        if reference is None:
            raise ValueError("reference samples need the run's reference model")
        self.reference, self.autocast = reference, autocast
        self.dtype = module_device_dtype(getattr(reference, "unet", None))[1]

    def describe(self) -> str:
        r = self.cfg.rollout
        return (f"{self.inner.describe()}\nreference samples: one per winner, drawn by the micro-step's reference "
                f"(DDIM {r.steps} steps, eta {r.eta:g}, guidance {r.guidance:g}), in the loser slot")

    def batches(self, micro: int) -> Iterator[PairBatch]:
        return self.inner.batches(micro)

    def prepare(self, raw: PairBatch, rand: BatchRandom) -> PairBatch:
        batch = self.inner.prepare(raw, rand)
        return dataclasses.replace(batch, l=self.sample(batch, rand.seeds()))

    def _caption_conditioning(self, batch: PairBatch) -> TextConditioning:
        cond = batch.prompt_cond if batch.prompt_cond is not None else encode_prompts(self.parts, batch.captions)
        return TextConditioning(cond.hidden_states.to(self.device),
                                None if cond.pooled is None else cond.pooled.to(self.device))

    def _empty_conditioning(self) -> TextConditioning:
        if self._empty is None:
            self._empty = encode_prompts(self.parts, [""])
        return self._empty

    @torch.no_grad()
    def sample(self, batch: PairBatch, seeds: list[int]) -> Side:
        """The reference's samples for the batch's captions (the loser side), one from each seed."""
        if self.reference is None:
            raise RuntimeError("ReferenceSampled.attach was not called before sampling")
        r, w = self.cfg.rollout, batch.w
        assert w.latents is not None and w.cond is not None, "prepare the winners first"
        cond = self._caption_conditioning(batch)
        kind = default_uncond(self.parts.family)
        uncond = unconditional(cond, kind, self._empty_conditioning() if kind == "empty" else None)
        time_ids = generation_time_ids(self.parts.family, len(batch), self.cfg.data.resolution, self.device)
        chunks = []
        for start in range(0, len(batch), r.sample_batch_size):
            rows = slice(start, start + r.sample_batch_size)
            count = len(seeds[rows])
            with self.autocast():
                trajectory = sample_from_conditioning(
                    self.reference.predict, self.scheduler, cond[rows], uncond[rows], seeds[rows],
                    (count, *w.latents.shape[1:]), steps=r.steps, guidance=r.guidance, eta=r.eta,
                    time_ids=None if time_ids is None else time_ids[rows], prompts=batch.captions[rows],
                    dtype=self.dtype,
                )
            chunks.append(trajectory.latents[:, -1])
        latents = torch.cat(chunks).to(w.latents.device, w.latents.dtype)
        return Side(own_captions=list(batch.captions), latents=latents, cond=w.cond, time_ids=time_ids, seeds=seeds)

    def save(self, folder: Path, rank: int) -> None:
        self.inner.save(folder, rank)

    def restore(self, folder: Path, rank: int) -> None:
        self.inner.restore(folder, rank)

    def summary(self) -> str | None:
        return self.inner.summary()

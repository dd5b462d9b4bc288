"""The reference-output pre-pass: the reference's errors for every micro-step of a run, computed before it.

For a method whose reference term depends only on what `method.noised` draws from a micro-step's batch
(the latents with their posterior noise, the conditioning with its dropped captions, the diffusion noise
and timestep: Diffusion-DPO and its forms, DCPO, KTO), those draws are a function of the run's seed, the
micro-step and the pair's position only (`BatchRandom`), and the data order a function of the micro-step
(`data.order`). So the pre-pass replays the run's micro-steps through the run's own batch source and the
method's own `noised`, concatenates many micro-steps into one no-grad reference forward of
`reference.precompute_batch` images (with `train.compile`, one micro-step per forward through the trained
model's compiled graph, whose roundings the errors must share), and keeps each micro-step's per-sample
errors. Training then reads them (`TrainableModel.reference_errors`) instead of running the reference: one
UNet pass per micro-step instead of two, and no adapter switching.

The errors are kept under `data.cache_dir/reference-<hash>/rank-<r>/`, the hash naming everything they
depend on (the data and its cache inputs, the model and its precision, the seed, the batch, the process
count, the method's `reference_key`, not beta, the loss form or the learning rate), in files of
consecutive micro-steps `steps-<start>-<end>.safetensors`, each written atomically. A run finds what an
earlier run computed and computes only the micro-steps it lacks, so a beta or learning-rate sweep computes
them once, a longer run extends them, and an interrupted pre-pass resumes. Each file also keeps every
micro-step's timesteps, and a lookup whose timesteps differ from the run's stops with an error: stored
errors are never applied to other draws.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from tqdm.auto import tqdm

from ..config.schema import RunConfig
from ..data.cache import latent_cache_inputs, text_cache_inputs
from ..files import atomic_write, atomic_write_text
from .methods.base import Method, NoisedPair, TrainableModel, prediction_errors
from .randomness import BatchRandom

STORE_VERSION = 1
FILE_STEPS = 1024  # micro-steps per file


def store_inputs(cfg: RunConfig, method: Method, world: int) -> dict[str, Any]:
    """Everything a run's reference errors depend on."""
    d, t = cfg.data, cfg.train
    unused = ("num_workers", "cache", "cache_dir", "streaming", "shuffle_buffer")
    data = {k: v for k, v in vars(d).items() if k not in unused}
    return {
        "version": STORE_VERSION,
        "latents": None if d.random_crop else latent_cache_inputs(cfg.model, d),  # random crops: no cache
        "text": text_cache_inputs(cfg.model, d),
        "data": data,
        "model": vars(cfg.model),
        "full_unet": not cfg.lora.enabled,
        # settings' defaults hash as before they existed ("off" as the boolean it was), so runs keep their errors
        "precision": {"mixed_precision": t.mixed_precision, "attention": t.attention,
                      "compile": False if t.compile == "off" else t.compile,
                      **({"channels_last": True} if t.channels_last else {})},
        "order": {"seed": t.seed, "batch_size": t.batch_size, "processes": world},
        "objective": method.reference_key(),
        "per_image_captions": method.per_image_captions,
    }


def store_folder(cfg: RunConfig, method: Method, world: int) -> Path:
    """The folder of a run's precomputed reference errors (`data.cache_dir/reference-<hash>`)."""
    inputs = store_inputs(cfg, method, world)
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(cfg.data.cache_dir) / f"reference-{digest}"


def wants_precompute(cfg: RunConfig, method: Method, reads_latent_cache: bool) -> bool:
    """Whether the run precomputes its reference errors (`reference.precompute`); 'on' with a method or data
    that cannot is an error saying why."""
    setting = cfg.reference.precompute
    if setting == "off":
        return False
    able = method.precomputable_reference and method.source.replayable(cfg)
    if setting == "on" and not able:
        why = ("data.streaming=true (a stream's order is not replayed)" if cfg.data.streaming and
               method.precomputable_reference else
               f"objective {cfg.objective.name!r} does not declare reference errors that depend only on its data "
               "(only dpo, dcpo and kto do)")
        raise ValueError(f"reference.precompute=on cannot apply: {why}; use reference.precompute=auto or off")
    return able and (setting == "on" or reads_latent_cache)


@dataclass
class PrecomputedErrors:
    """This process's reference errors and timesteps, row m for micro-step m (see the module docstring)."""

    errors: torch.Tensor  # (micro-steps, samples per micro-step), float32
    timesteps: torch.Tensor  # (micro-steps, samples per micro-step), int64
    folder: Path

    def lookup(self, rand: BatchRandom, t: torch.Tensor) -> torch.Tensor:
        """The reference errors of micro-step `rand.micro_step`, after checking its timesteps `t` are the ones
        they were computed at."""
        m = rand.micro_step
        if m >= len(self.errors):
            raise IndexError(f"{self.folder}: reference errors for {len(self.errors)} micro-steps, the run asked for "
                             f"micro-step {m}")
        if not torch.equal(self.timesteps[m], t.detach().cpu().long()):
            raise RuntimeError(
                f"{self.folder}: the precomputed reference errors of micro-step {m} were drawn at other timesteps than "
                "this run's: the folder does not match the run's draws. Delete it (it is recomputed) or set "
                "reference.precompute=off"
            )
        return self.errors[m].to(t.device)


def _files(folder: Path) -> dict[tuple[int, int], Path]:
    out = {}
    for path in folder.glob("steps-*-*.safetensors"):
        _, start, end = path.stem.split("-")
        out[(int(start), int(end))] = path
    return out


def _missing(files: dict[tuple[int, int], Path], total: int) -> list[tuple[int, int]]:
    """The micro-step ranges below `total` no file covers, split in pieces of at most FILE_STEPS."""
    covered = torch.zeros(total, dtype=torch.bool)
    for start, end in files:
        covered[start:min(end, total)] = True
    ranges, m = [], 0
    while m < total:
        if covered[m]:
            m += 1
            continue
        end = m
        while end < total and not covered[end] and end - m < FILE_STEPS:
            end += 1
        ranges.append((m, end))
        m = end
    return ranges


def _cat_kwargs(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in parts[0].items():
        if isinstance(value, torch.Tensor):
            out[key] = torch.cat([p[key] for p in parts])
        elif isinstance(value, dict):
            out[key] = _cat_kwargs([p[key] for p in parts])
        else:
            out[key] = value
    return out


def _cat(noised: list[NoisedPair]) -> NoisedPair:
    return NoisedPair(*(torch.cat([getattr(n, f) for n in noised]) for f in ("noisy", "t", "noise", "target")),
                      _cat_kwargs([n.kwargs for n in noised]))


@torch.no_grad()
def _compute(
    method: Method, model: TrainableModel, prepared: Callable[[int], tuple[Any, BatchRandom]], start: int, end: int,
    batch_images: int, autocast: Callable[[], AbstractContextManager],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference errors and timesteps of micro-steps [start, end), `batch_images` images per reference forward
    (one micro-step per forward for a reference that must run the trained model's compiled graph)."""
    assert model.reference is not None
    if getattr(model.reference, "per_micro_step", False):
        batch_images = 1
    errors: list[torch.Tensor] = []
    steps: list[torch.Tensor] = []
    pending: list[NoisedPair] = []

    def flush() -> None:
        joined = _cat(pending)
        with autocast():
            out = model.reference.predict(joined.noisy, joined.t, **joined.kwargs)  # type: ignore[union-attr]
        err = prediction_errors(model, out, joined, method.error_space).float().cpu()
        errors.extend(err.split([len(n.t) for n in pending]))
        pending.clear()

    for m in range(start, end):
        batch, rand = prepared(m)
        noised = method.noised(model, batch, rand)
        steps.append(noised.t.detach().cpu().long())
        pending.append(noised)
        if sum(len(n.t) for n in pending) >= batch_images:
            flush()
    if pending:
        flush()
    return torch.stack(errors), torch.stack(steps)


def precompute_reference_errors(
    cfg: RunConfig, method: Method, model: TrainableModel, source: Any, micro_steps: int, rank: int, world: int,
    device: torch.device, autocast: Callable[[], AbstractContextManager], log: Callable[[str], None] = print,
    progress: bool = True,
) -> PrecomputedErrors:
    """This process's reference errors for micro-steps [0, `micro_steps`), computing (and saving) the ones
    no earlier run saved, with a progress bar when `progress`; `source` is the run's batch source (its
    `batches` and `prepare` replay the run)."""
    root = store_folder(cfg, method, world)
    folder = root / f"rank-{rank}"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "inputs.json", json.dumps(store_inputs(cfg, method, world), indent=2, default=str))
    missing = _missing(_files(folder), micro_steps)
    started = time.perf_counter()
    bar = tqdm(total=sum(end - start for start, end in missing), desc="reference errors", unit="micro-step",
               disable=not progress or not missing, dynamic_ncols=True)
    for start, end in missing:
        batches = iter(source.batches(start))

        def prepared(m: int) -> tuple[Any, BatchRandom]:
            raw = next(batches)
            rand = BatchRandom(cfg.train.seed, m, len(raw), rank, world, device)
            bar.update(1)
            return source.prepare(raw, rand), rand

        errors, steps = _compute(method, model, prepared, start, end, cfg.reference.precompute_batch, autocast)
        tensors = {"errors": errors.contiguous(), "timesteps": steps.contiguous()}
        atomic_write(folder / f"steps-{start:07d}-{end:07d}.safetensors", lambda out: out.write(save(tensors)))
    bar.close()
    computed = sum(end - start for start, end in missing)
    errors_rows: list[torch.Tensor] = []
    steps_rows: list[torch.Tensor] = []
    m = 0
    for (start, end), path in sorted(_files(folder).items()):
        if end <= m or start > m:
            continue
        tensors = load_file(str(path))
        errors_rows.append(tensors["errors"][m - start : micro_steps - start])
        steps_rows.append(tensors["timesteps"][m - start : micro_steps - start])
        m = min(end, micro_steps)
        if m >= micro_steps:
            break
    errors, steps = torch.cat(errors_rows), torch.cat(steps_rows)
    if len(errors) < micro_steps:
        raise RuntimeError(f"{folder}: reference errors cover {len(errors)} of {micro_steps} micro-steps")
    log(f"reference errors: {micro_steps} micro-steps, {computed} computed now in "
        f"{time.perf_counter() - started:.1f} s, {micro_steps - computed} reused; {root}")
    return PrecomputedErrors(errors, steps, folder)

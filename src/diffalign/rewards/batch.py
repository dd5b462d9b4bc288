"""Batch scoring: many images against their prompts, in batches, one bad image costing only itself.

`score_in_batches(scorers, images, prompts)` is the one loop that every caller uses (`diffalign
score`, `eval`, `pairs`, `relabel`, `data.relabel_with`, an online training round). Images are

* a batch held in memory: a uint8 array or tensor (N, H, W, 3) or a float tensor (N, 3, H, W) in
  [0, 1], handed to the scorers in slices as it is (no copy through PIL, the device kept); or
* a sequence of single images, each a PIL image, an array or tensor (HWC or CHW), or a callable
  that loads one (a file, a row of a table) when its batch comes; these are scored as PIL RGB images.

Each batch is loaded once and scored by every scorer. A scorer call that fails is retried on the
images of equal size (scorers that stack a tensor need one size per call), and a group that still
fails is halved until the failing images stand alone; an image that cannot be loaded, that a scorer
rejects, or whose score is not finite becomes a `ScoreFailure(index, reason)` and a NaN score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Union

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .base import ImageBatch, Scorer, check_batch, to_pil_images

DEFAULT_BATCH_SIZE = 32

ImageSource = Union[Image.Image, np.ndarray, torch.Tensor, Callable[[], Union[Image.Image, np.ndarray, torch.Tensor]]]


class ScoreFailure(NamedTuple):
    """An image that got no score: its index in the input and why.

    `scorer` is the scorer that failed on it (`reason` then starts with its name), or None when the
    image could not be loaded (`reason` is then the loader's message as it is).
    """

    index: int
    reason: str
    scorer: str | None = None


class ScorerFailure(ValueError):
    """A scorer failed on every image of the first batch: a wrong scorer or missing weights, not bad images."""


@dataclass
class BatchScores:
    """Per scorer one float64 score per image (NaN where it failed), and the failures, in input order."""

    scores: dict[str, torch.Tensor]
    failures: list[ScoreFailure] = field(default_factory=list)
    interrupted: bool = False  # Ctrl-C stopped the scoring (only with `stop_on_interrupt`)

    def values(self, scorer: str | None = None) -> torch.Tensor:
        """The scores of `scorer`, shape (N,); without a name, those of the only scorer."""
        if scorer is None:
            if len(self.scores) != 1:
                raise ValueError(f"{len(self.scores)} scorers ({', '.join(self.scores)}): name the one whose scores you want")
            return next(iter(self.scores.values()))
        return self.scores[scorer]

    @property
    def failed(self) -> list[int]:
        """Indices of the images with at least one failure, sorted."""
        return sorted({f.index for f in self.failures})

    def reasons(self) -> dict[int, list[str]]:
        """Every failure's reason, grouped by image index."""
        out: dict[int, list[str]] = {}
        for failure in self.failures:
            out.setdefault(failure.index, []).append(failure.reason)
        return out


def describe_error(error: BaseException) -> str:
    """An exception as one line: a ValueError's message as it is (it is meant for users), else `Type: message`."""
    text = str(error) or type(error).__name__
    return text if isinstance(error, ValueError) else f"{type(error).__name__}: {text}"


def _call(scorer: Scorer, images: object, prompts: list[str], count: int) -> torch.Tensor:
    with torch.no_grad():
        result = scorer.score(images, prompts)  # type: ignore[arg-type]
    values = torch.as_tensor(result).detach().cpu().double().reshape(-1)
    if len(values) != count:
        raise ValueError(f"returned {len(values)} scores for {count} images")
    return values


class _Batch:
    """The loaded images of one batch: a slice of an in-memory tensor/array, or a list of PIL images."""

    def __init__(self, images: ImageBatch | list[Image.Image]) -> None:
        self.images = images

    def take(self, positions: list[int]) -> object:
        if isinstance(self.images, list):
            return [self.images[p] for p in positions]
        return self.images[positions]

    def size_of(self, position: int) -> tuple[int, ...]:
        if isinstance(self.images, list):
            return self.images[position].size
        return ()  # an array batch has one size


def _score_batch(scorer: Scorer, batch: _Batch, prompts: list[str]) -> tuple[torch.Tensor, dict[int, str]]:
    """One scorer's scores of one loaded batch (NaN where it failed) and the reason of each failure, by position."""
    values = torch.full((len(prompts),), float("nan"), dtype=torch.float64)
    errors: dict[int, str] = {}

    def attempt(positions: list[int], by_size: bool) -> None:
        try:
            values[positions] = _call(scorer, batch.take(positions), [prompts[p] for p in positions], len(positions))
            return
        except Exception as error:  # noqa: BLE001  (any failure of a scorer call is retried on fewer images)
            if len(positions) == 1:
                errors[positions[0]] = f"{scorer.name}: {describe_error(error)}"
                return
        groups: dict[tuple[int, ...], list[int]] = {}
        for p in positions:
            groups.setdefault(batch.size_of(p), []).append(p)
        if by_size and len(groups) > 1:
            parts = list(groups.values())
        else:
            parts = [positions[: len(positions) // 2], positions[len(positions) // 2 :]]
        for part in parts:
            attempt(part, False)

    attempt(list(range(len(prompts))), True)
    for p, value in enumerate(values.tolist()):
        if p not in errors and not np.isfinite(value):
            errors[p] = f"{scorer.name}: non-finite score ({value})"
            values[p] = float("nan")
    return values, errors


def _as_pil(image: Image.Image | np.ndarray | torch.Tensor) -> Image.Image:
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 3:
        return to_pil_images(image)[0]
    raise TypeError(f"expected a PIL image or one HWC/CHW array or tensor, got {type(image).__name__}")


def _load(sources: Sequence[ImageSource], indices: range) -> tuple[list[int], list[Image.Image], list[ScoreFailure]]:
    """Load the images at `indices` of a sequence; a loader that raises becomes that image's failure."""
    kept, images, failures = [], [], []
    for i in indices:
        source = sources[i]
        try:
            images.append(_as_pil(source() if callable(source) else source))
            kept.append(i)
        except Exception as error:  # noqa: BLE001  (one unreadable image must not stop the run)
            failures.append(ScoreFailure(i, describe_error(error)))
    return kept, images, failures


def _is_array_batch(images: object) -> bool:
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim != 4:
            raise ValueError(
                f"an image array must be a batch (N, H, W, 3) or (N, 3, H, W), got shape {tuple(images.shape)}; "
                "pass one image as a list of one"
            )
        return True
    return False


def score_in_batches(
    scorers: Scorer | Sequence[Scorer],
    images: ImageBatch | Sequence[ImageSource],
    prompts: Sequence[str],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
    desc: str | None = None,
    stop_if_first_batch_fails: bool = False,
    stop_after_failure: bool = False,
    stop_on_interrupt: bool = False,
    where: Callable[[int], str] | None = None,
) -> BatchScores:
    """Score image i against prompt i with every scorer, `batch_size` images per call (module docstring).

    Failures do not raise: each bad image is a `ScoreFailure` in the result and a NaN score. With
    `stop_if_first_batch_fails`, a scorer that fails on every image of the first batch raises
    `ScorerFailure` (a broken scorer, not bad images); `where(i)` names image i in that message.
    With `stop_after_failure`, scoring ends after the first batch with a failure, the later images
    left NaN without failures (for callers that cannot use a partial result and raise).
    With `stop_on_interrupt`, Ctrl-C ends the scoring and the result, `interrupted` set, holds what
    was scored (the rest NaN, without failures); otherwise KeyboardInterrupt propagates.
    """
    scorer_list = list(scorers) if isinstance(scorers, Sequence) else [scorers]
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    in_memory = _is_array_batch(images)
    check_batch(images, prompts)  # type: ignore[arg-type]
    n = len(prompts)
    result = BatchScores({s.name: torch.full((n,), float("nan"), dtype=torch.float64) for s in scorer_list})
    name_of = where or (lambda i: f"image {i}")
    first_batch = True
    bar = tqdm(total=n, desc=desc or f"scoring ({', '.join(result.scores)})", unit="image", disable=not progress)
    try:
        with bar:
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                if in_memory:
                    indices, batch = list(range(start, stop)), _Batch(images[start:stop])  # type: ignore[index]
                else:
                    indices, loaded, failures = _load(images, range(start, stop))  # type: ignore[arg-type]
                    result.failures += failures
                    batch = _Batch(loaded)
                texts = [prompts[i] for i in indices]
                for scorer in scorer_list if indices else ():
                    values, errors = _score_batch(scorer, batch, texts)
                    result.scores[scorer.name][indices] = values
                    result.failures += [ScoreFailure(indices[p], reason, scorer.name) for p, reason in errors.items()]
                    if stop_if_first_batch_fails and first_batch and len(errors) == len(indices):
                        example = errors[0]
                        raise ScorerFailure(
                            f"scorer {scorer.name!r} failed on all {len(indices)} images of the first batch, e.g. "
                            f"{name_of(indices[0])}: {example}; stopped before scoring the rest"
                        )
                first_batch = first_batch and not indices
                bar.update(stop - start)
                if stop_after_failure and result.failures:
                    break
    except KeyboardInterrupt:
        if not stop_on_interrupt:
            raise
        result.interrupted = True
    result.failures.sort(key=lambda f: f.index)
    return result

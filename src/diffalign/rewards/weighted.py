"""Several scorers as one reward: the weighted sum of their scores, each kept on its own.

A config names them as a mapping, scorer -> weight or scorer -> {weight: W, OPTION: VALUE, ...} (the other
keys are the scorer's constructor options), e.g. `rollout.rewards={hpsv2: 1.0, pickscore: {weight: 0.5,
dtype: fp32}}`. `parse_weighted` checks such a mapping (every message names the key at fault, e.g.
`rollout.rewards.pickscore`), `WeightedScorers.build` builds one scorer per entry, and `WeightedScorers.score`
gives each image's weighted sum and every scorer's part. An image any scorer could not score gets the sum NaN
(its other parts are kept): a partly judged image is not judged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .base import ImageBatch, Scorer, construct_scorer, one_line, scorer_factory
from .batch import DEFAULT_BATCH_SIZE, ScoreFailure, score_in_batches

WEIGHT = "weight"
_DOTTED_HINT = ("a scorer name holding dots (hpsv2.1, my_rewards.py:NAME) must be written inside the mapping, "
                "KEY={hpsv2.1: 1.0}, not KEY.hpsv2.1=1.0")


@dataclass(frozen=True)
class WeightedScorer:
    """One entry of a reward mapping: the scorer's name, its weight in the sum, its constructor options and the
    config key that set it (named by every error about it)."""

    name: str
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)
    key: str = "reward"


def parse_weighted(rewards: Mapping[str, Any], key: str) -> list[WeightedScorer]:
    """The entries of the reward mapping found at config key `key`, in their order; a weight that is not a finite
    number, an entry that is neither a number nor a mapping, a mapping without a weight or a mapping whose every
    weight is 0 raise ValueError naming `key.NAME` (or `key`)."""
    if not isinstance(rewards, Mapping):
        raise ValueError(f"{key}: expected a mapping scorer -> weight or scorer -> {{weight: W, OPTION: VALUE}}, "
                         f"got {rewards!r}")
    entries = []
    for name, value in rewards.items():
        where = f"{key}.{name}"
        if isinstance(value, Mapping):
            if WEIGHT not in value:
                raise ValueError(f"{where}: {dict(value)!r} has no weight; give {where}={{weight: W, OPTION: VALUE, "
                                 f"...}} or {where}=W ({_DOTTED_HINT})")
            weight, options = value[WEIGHT], {str(k): v for k, v in value.items() if k != WEIGHT}
            where = f"{where}.{WEIGHT}"
        elif _is_number(value):
            weight, options = value, {}
        else:
            raise ValueError(f"{where}: {value!r} is neither a weight (a number) nor a mapping {{weight: W, OPTION: "
                             "VALUE, ...}")
        if not _is_number(weight) or not math.isfinite(weight):
            raise ValueError(f"{where}: the weight {weight!r} is not a finite number")
        entries.append(WeightedScorer(str(name), float(weight), options, f"{key}.{name}"))
    if entries and all(entry.weight == 0 for entry in entries):
        raise ValueError(f"{key}: every weight is 0, so the reward would be 0 for every image; give at least one "
                         "scorer a weight")
    return entries


def check_weighted(entries: Sequence[WeightedScorer]) -> None:
    """Resolve every entry's scorer name (registered, `remote:` address or your own reference) without building
    it, so that a wrong name fails before any model loads; the error names the entry's config key."""
    for entry in entries:
        _resolve(entry)


@dataclass
class WeightedScores:
    """Scores of N images: `total` (N,) the weighted sum, NaN where any part is; `parts` (N,) per scorer entry, NaN
    where that scorer failed; the failures of every scorer, in image order (float64 tensors)."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor]
    failures: list[ScoreFailure]


@dataclass
class WeightedScorers:
    """The built scorers of a reward mapping, with their weights (`build`)."""

    entries: list[WeightedScorer]
    scorers: list[Scorer]

    @classmethod
    def build(cls, entries: Sequence[WeightedScorer], device: str) -> WeightedScorers:
        """One scorer per entry, `build_scorer(name, device=device, **options)` (an option may set the device);
        a failure to build is a one-line error naming the entry's config key, the options and the cause."""
        scorers = []
        for entry in entries:
            factory = _resolve(entry)
            try:
                scorers.append(construct_scorer(entry.name, factory, {"device": device, **entry.options}))
            except ValueError as error:
                raise ValueError(f"{entry.key}: {error}") from error.__cause__
        return cls(list(entries), scorers)

    @property
    def weights(self) -> dict[str, float]:
        """Each entry's weight, by name."""
        return {entry.name: entry.weight for entry in self.entries}

    def score(self, images: ImageBatch, prompts: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE) -> WeightedScores:
        """Every scorer's scores of image i against prompt i (`score_in_batches`, a bad image costing only
        itself) and their weighted sum."""
        parts: dict[str, torch.Tensor] = {}
        failures: list[ScoreFailure] = []
        for entry, scorer in zip(self.entries, self.scorers):
            result = score_in_batches(scorer, images, prompts, batch_size=batch_size)
            parts[entry.name] = result.values()
            failures += result.failures
        total = torch.zeros(len(prompts), dtype=torch.float64)
        for entry in self.entries:
            total += entry.weight * parts[entry.name]
        failures.sort(key=lambda failure: failure.index)
        return WeightedScores(total, parts, failures)


def _resolve(entry: WeightedScorer) -> Callable[..., Scorer]:
    try:
        return scorer_factory(entry.name)
    except KeyError as error:
        raise KeyError(f"{entry.key}: {error.args[0] if error.args else error}") from error
    except (ValueError, OSError, ImportError) as error:
        raise ValueError(f"{entry.key}: {one_line(error)}") from error


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


__all__ = ["WeightedScorer", "WeightedScorers", "WeightedScores", "check_weighted", "parse_weighted"]

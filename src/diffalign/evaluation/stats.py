"""Bootstrap statistics of paired scores, resampling prompts (a cluster bootstrap over their seeds).

The seeds of one prompt are correlated (same caption, often the same failure), so the unit of
resampling is the prompt: each resample draws as many prompts as there are, with replacement, and
keeps all the pairs of each prompt drawn. With one seed per prompt this is the ordinary bootstrap.
Intervals are percentile intervals (95 % by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_MAX_DRAWS_PER_CHUNK = 4_000_000  # resamples × prompts drawn at once; bounds the memory of one chunk


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap confidence interval (NaN where undefined)."""

    value: float
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict:
        return {"value": _json_float(self.value), "ci_low": _json_float(self.ci_low), "ci_high": _json_float(self.ci_high)}


@dataclass(frozen=True)
class PairedComparison:
    """Candidate vs baseline over paired scores: win/tie/loss counts, rates and mean difference with CIs."""

    n: int
    prompts: int
    wins: int
    ties: int
    losses: int
    tie_tolerance: float
    win_rate: Estimate  # wins / n
    tie_rate: Estimate  # ties / n
    loss_rate: Estimate  # losses / n
    win_rate_decided: Estimate  # wins / (wins + losses)
    win_plus_half_tie: Estimate  # (wins + ties / 2) / n
    mean_difference: Estimate  # mean of candidate - baseline
    resamples: int
    seed: int
    confidence: float = 0.95

    def as_dict(self) -> dict:
        """A JSON-ready dict: ints, floats, None for NaN; each estimate as {value, ci_low, ci_high}."""
        out: dict = {}
        for key, value in self.__dict__.items():
            if isinstance(value, Estimate):
                out[key] = value.as_dict()
            elif isinstance(value, float):
                out[key] = _json_float(value)
            else:
                out[key] = value
        return out


def _json_float(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def _as_1d(name: str, values, length: int | None = None) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of scores, got shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"{name} has {bad.size} non-finite score(s), the first at position {bad[0]}: {array[bad[0]]}")
    return array


def _group_codes(groups, n: int) -> tuple[np.ndarray, int]:
    """Map each pair's group label to 0..G-1; no groups means every pair is its own group."""
    if groups is None:
        return np.arange(n), n
    labels = np.asarray(groups)
    if labels.shape != (n,):
        raise ValueError(f"groups has shape {labels.shape} but the scores have shape {(n,)}; give one group per pair")
    _, codes = np.unique(labels, return_inverse=True)
    codes = codes.reshape(-1)
    return codes, int(codes.max()) + 1 if n else 0


def _resampled_sums(per_group: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Sums over a cluster bootstrap: per_group (k, G) -> (k, resamples), drawing G groups per resample."""
    k, n_groups = per_group.shape
    rng = np.random.default_rng(seed)
    out = np.empty((k, resamples))
    chunk = max(1, _MAX_DRAWS_PER_CHUNK // max(n_groups, 1))
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        rows = stop - start
        drawn = rng.integers(0, n_groups, size=(rows, n_groups))
        # counts[r, g]: how often resample r drew group g; a matrix product then sums every statistic at once
        flat = (drawn + np.arange(rows)[:, None] * n_groups).ravel()
        counts = np.bincount(flat, minlength=rows * n_groups).reshape(rows, n_groups).astype(float)
        out[:, start:stop] = per_group @ counts.T
    return out


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _estimate(point_num: float, point_den: float, num: np.ndarray, den: np.ndarray, confidence: float) -> Estimate:
    value = point_num / point_den if point_den > 0 else float("nan")
    low, high = _interval(_ratio(num, den), confidence)
    return Estimate(float(value), low, high)


def compare_paired(
    candidate,
    baseline,
    groups=None,
    tie_tolerance: float = 0.0,
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedComparison:
    """Compare paired scores (same prompt and seed): counts, rates and the mean difference with bootstrap CIs.

    A pair is a win when candidate - baseline > tie_tolerance, a loss when < -tie_tolerance, else a tie.
    `groups` holds the prompt index of each pair; the bootstrap resamples whole prompts (None: each pair
    is its own prompt). Every statistic uses the same `resamples` resamples of a numpy Generator seeded
    with `seed`, so results are reproducible. Empty inputs give zero counts and NaN estimates.
    """
    candidate = _as_1d("candidate", candidate)
    baseline = _as_1d("baseline", baseline)
    if candidate.shape != baseline.shape:
        raise ValueError(f"paired scores differ in shape: candidate {candidate.shape} vs baseline {baseline.shape}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    codes, n_groups = _group_codes(groups, len(candidate))
    diff = candidate - baseline
    win, loss = diff > tie_tolerance, diff < -tie_tolerance
    tie = ~(win | loss)
    columns = np.stack([win, tie, loss, np.ones_like(diff, dtype=bool)]).astype(float)
    columns = np.vstack([columns, diff[None, :]])
    per_group = np.zeros((columns.shape[0], n_groups))
    if n_groups:
        np.add.at(per_group.T, codes, columns.T)
        boot = _resampled_sums(per_group, resamples, seed)
    else:
        boot = np.zeros((columns.shape[0], 0))
    wins, ties, losses, count, total = columns.sum(axis=1)
    b_wins, b_ties, b_losses, b_n, b_total = boot
    return PairedComparison(
        n=int(count),
        prompts=n_groups,
        wins=int(wins),
        ties=int(ties),
        losses=int(losses),
        tie_tolerance=float(tie_tolerance),
        win_rate=_estimate(wins, count, b_wins, b_n, confidence),
        tie_rate=_estimate(ties, count, b_ties, b_n, confidence),
        loss_rate=_estimate(losses, count, b_losses, b_n, confidence),
        win_rate_decided=_estimate(wins, wins + losses, b_wins, b_wins + b_losses, confidence),
        win_plus_half_tie=_estimate(wins + ties / 2, count, b_wins + b_ties / 2, b_n, confidence),
        mean_difference=_estimate(total, count, b_total, b_n, confidence),
        resamples=int(resamples),
        seed=int(seed),
        confidence=float(confidence),
    )


def bootstrap_mean(values, groups=None, resamples: int = 2000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Mean, median and std of `values` with a cluster-bootstrap CI of the mean (resampling `groups`).

    Returns {"mean", "median", "std", "ci_low", "ci_high", "n"} with None for undefined values (no data);
    std is the sample standard deviation (ddof=1; 0.0 for a single value).
    """
    values = _as_1d("values", values)
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    n = len(values)
    if n == 0:
        return {"mean": None, "median": None, "std": None, "ci_low": None, "ci_high": None, "n": 0}
    codes, n_groups = _group_codes(groups, n)
    per_group = np.zeros((2, n_groups))
    np.add.at(per_group.T, codes, np.stack([values, np.ones(n)]).T)
    b_sum, b_n = _resampled_sums(per_group, resamples, seed)
    low, high = _interval(_ratio(b_sum, b_n), confidence)
    return {
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "std": float(values.std(ddof=1)) if n > 1 else 0.0,
        "ci_low": _json_float(low),
        "ci_high": _json_float(high),
        "n": n,
    }

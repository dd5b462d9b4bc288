"""Win/tie/loss of paired scores (same prompt and seed) with a confidence interval."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class WinTieLoss:
    """Counts of a paired comparison and the win rate among the non-tied pairs with its 95 % CI."""

    wins: int
    ties: int
    losses: int
    tie_tolerance: float
    win_rate: float  # wins / (wins + losses)
    ci_low: float
    ci_high: float

    @property
    def total(self) -> int:
        return self.wins + self.ties + self.losses

    def as_dict(self) -> dict:
        return asdict(self)


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % by default); (0, 1) with no trials."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z**2 / trials
    centre = (p + z**2 / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def win_tie_loss(candidate: np.ndarray, baseline: np.ndarray, tie_tolerance: float = 0.0) -> WinTieLoss:
    """Compare paired scores: a win when candidate - baseline > tol, a loss when < -tol, else a tie."""
    candidate, baseline = np.asarray(candidate, float), np.asarray(baseline, float)
    if candidate.shape != baseline.shape:
        raise ValueError(f"paired scores differ in shape: {candidate.shape} vs {baseline.shape}")
    diff = candidate - baseline
    wins, losses = int((diff > tie_tolerance).sum()), int((diff < -tie_tolerance).sum())
    ties = len(diff) - wins - losses
    decided = wins + losses
    low, high = wilson_interval(wins, decided)
    return WinTieLoss(wins, ties, losses, tie_tolerance, wins / decided if decided else float("nan"), low, high)


@dataclass
class PairedDifference:
    """Mean of candidate - baseline over paired scores, with a 95 % confidence interval."""

    mean: float
    ci_low: float
    ci_high: float
    pairs: int

    def as_dict(self) -> dict:
        return asdict(self)


def paired_difference(candidate: np.ndarray, baseline: np.ndarray, z: float = 1.959964) -> PairedDifference:
    """Mean paired difference and its 95 % CI by the normal approximation (mean ± z·s/√n; fine for n ≳ 30)."""
    diff = np.asarray(candidate, float) - np.asarray(baseline, float)
    n = len(diff)
    if n == 0:
        return PairedDifference(float("nan"), float("nan"), float("nan"), 0)
    half = z * diff.std(ddof=1) / math.sqrt(n) if n > 1 else float("inf")
    return PairedDifference(float(diff.mean()), float(diff.mean() - half), float(diff.mean() + half), n)

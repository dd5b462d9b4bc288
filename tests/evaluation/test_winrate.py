import numpy as np
import pytest

from diffalign.evaluation.winrate import wilson_interval, win_tie_loss


def test_win_tie_loss_counts_and_rate():
    tuned = np.array([0.9, 0.5, 0.30, 0.7, 0.2])
    base = np.array([0.8, 0.5, 0.35, 0.695, 0.1])
    result = win_tie_loss(tuned, base, tie_tolerance=0.01)
    assert (result.wins, result.ties, result.losses) == (2, 2, 1)
    assert result.win_rate == pytest.approx(2 / 3)
    exact = win_tie_loss(tuned, base)
    assert (exact.wins, exact.ties, exact.losses) == (3, 1, 1)


def test_wilson_interval_known_value():
    low, high = wilson_interval(70, 100)
    assert low == pytest.approx(0.6041, abs=1e-3) and high == pytest.approx(0.7810, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        win_tie_loss(np.zeros(3), np.zeros(4))


def test_paired_difference_mean_and_interval():
    from diffalign.evaluation.winrate import paired_difference

    d = paired_difference(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 1.0, 2.0, 2.0]))
    assert d.mean == pytest.approx(1.25) and d.pairs == 4
    half = 1.959964 * np.std([1, 1, 1, 2], ddof=1) / 2
    assert (d.ci_low, d.ci_high) == pytest.approx((1.25 - half, 1.25 + half))

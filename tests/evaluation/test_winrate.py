import pytest

from diffalign.evaluation.winrate import wilson_interval


def test_wilson_interval_known_value():
    low, high = wilson_interval(70, 100)
    assert (low, high) == pytest.approx((0.6041, 0.7810), abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)

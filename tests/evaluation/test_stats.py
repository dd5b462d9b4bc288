import json
import time

import numpy as np
import pytest

from diffalign.evaluation.stats import bootstrap_mean, compare_paired


def test_counts_and_rates_of_a_hand_made_case():
    c = compare_paired([3, 2, 1, 1], [1, 2, 3, 0])
    assert (c.wins, c.ties, c.losses, c.n, c.prompts) == (2, 1, 1, 4, 4)
    assert c.win_rate.value == pytest.approx(0.5)
    assert c.tie_rate.value == pytest.approx(0.25)
    assert c.loss_rate.value == pytest.approx(0.25)
    assert c.win_rate_decided.value == pytest.approx(2 / 3)
    assert c.win_plus_half_tie.value == pytest.approx(2.5 / 4)
    assert c.mean_difference.value == pytest.approx((2 + 0 - 2 + 1) / 4)


def test_tolerance_moves_a_small_difference_into_the_ties():
    # differences +2, 0, -2, +1: a tolerance of 1 makes the +1 a tie (strictly greater is needed to win)
    c = compare_paired([3, 2, 1, 1], [1, 2, 3, 0], tie_tolerance=1.0)
    assert (c.wins, c.ties, c.losses) == (1, 2, 1)
    assert c.tie_tolerance == 1.0
    assert c.win_rate_decided.value == pytest.approx(0.5)


def test_all_wins_give_a_degenerate_interval():
    c = compare_paired([1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 0.0, 0.0, 0.0, 0.0], resamples=500)
    assert (c.win_rate.ci_low, c.win_rate.ci_high) == (1.0, 1.0)
    assert (c.win_rate_decided.ci_low, c.win_rate_decided.ci_high) == (1.0, 1.0)
    assert (c.loss_rate.ci_low, c.loss_rate.ci_high) == (0.0, 0.0)


def test_intervals_contain_the_point_estimates():
    rng = np.random.default_rng(1)
    base = rng.random(300)
    cand = base + rng.normal(0.05, 0.2, 300)
    c = compare_paired(cand, base, np.repeat(np.arange(100), 3))
    for name in ("win_rate", "tie_rate", "loss_rate", "win_rate_decided", "win_plus_half_tie", "mean_difference"):
        e = getattr(c, name)
        assert e.ci_low <= e.value <= e.ci_high, name
    assert c.prompts == 100


def test_cluster_bootstrap_is_wider_when_seeds_of_a_prompt_agree():
    rng = np.random.default_rng(2)
    per_prompt = rng.normal(0.0, 1.0, 40)
    diff = np.repeat(per_prompt, 5)  # the five seeds of a prompt are perfectly correlated
    groups = np.repeat(np.arange(40), 5)
    clustered = compare_paired(diff, np.zeros_like(diff), groups)
    independent = compare_paired(diff, np.zeros_like(diff))
    width = lambda e: e.ci_high - e.ci_low
    assert width(clustered.mean_difference) > 1.5 * width(independent.mean_difference)
    assert width(clustered.win_rate) > 1.5 * width(independent.win_rate)


def test_one_pair_per_prompt_is_the_ordinary_bootstrap():
    rng = np.random.default_rng(3)
    a, b = rng.random(50), rng.random(50)
    assert compare_paired(a, b, np.arange(50) * 7) == compare_paired(a, b)


def test_one_group_collapses_the_interval():
    c = compare_paired([2.0, 0.0, 1.0], [1.0, 1.0, 1.0], groups=[4, 4, 4])
    assert c.prompts == 1
    assert (c.win_rate.ci_low, c.win_rate.value, c.win_rate.ci_high) == pytest.approx((1 / 3,) * 3)
    assert (c.mean_difference.ci_low, c.mean_difference.ci_high) == (0.0, 0.0)


def test_seeded_reproducibility():
    rng = np.random.default_rng(4)
    a, b, g = rng.random(90), rng.random(90), np.repeat(np.arange(30), 3)
    assert compare_paired(a, b, g, seed=7) == compare_paired(a, b, g, seed=7)
    assert compare_paired(a, b, g, seed=7).mean_difference != compare_paired(a, b, g, seed=8).mean_difference
    assert bootstrap_mean(a, g, 300, 5) == bootstrap_mean(a, g, 300, 5)


def test_as_dict_is_json_ready_with_none_for_nan():
    ties_only = compare_paired([1.0, 1.0], [1.0, 1.0], resamples=100)
    d = ties_only.as_dict()
    json.dumps(d, allow_nan=False)
    assert d["win_rate_decided"] == {"value": None, "ci_low": None, "ci_high": None}
    assert d["tie_rate"]["value"] == 1.0 and isinstance(d["wins"], int)
    assert set(d) >= {"n", "prompts", "wins", "ties", "losses", "win_rate", "mean_difference", "resamples", "seed"}


def test_empty_input_gives_nan_estimates():
    c = compare_paired([], [])
    assert (c.n, c.wins, c.prompts) == (0, 0, 0)
    assert c.as_dict()["win_rate"]["value"] is None
    assert bootstrap_mean([], None, 100, 0) == {"mean": None, "median": None, "std": None, "ci_low": None, "ci_high": None, "n": 0}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"candidate": np.zeros(3), "baseline": np.zeros(4)}, r"candidate \(3,\) vs baseline \(4,\)"),
        ({"candidate": np.zeros(3), "baseline": np.zeros(3), "groups": [0, 1]}, r"groups has shape \(2,\)"),
        ({"candidate": np.zeros((2, 2)), "baseline": np.zeros((2, 2))}, "1-D"),
        ({"candidate": [0.0, np.nan], "baseline": [0.0, 0.0]}, "position 1"),
        ({"candidate": [0.0], "baseline": [0.0], "resamples": 0}, "resamples"),
    ],
)
def test_errors_name_what_is_wrong(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compare_paired(**kwargs)


def test_bootstrap_mean_summary():
    values = np.array([1.0, 2.0, 3.0, 10.0])
    s = bootstrap_mean(values, [0, 0, 1, 1], resamples=400, seed=0)
    assert s["mean"] == pytest.approx(4.0) and s["median"] == pytest.approx(2.5)
    assert s["std"] == pytest.approx(values.std(ddof=1)) and s["n"] == 4
    # two prompts with means 1.5 and 6.5: every resample's mean is one of 1.5, 4.0, 6.5
    assert s["ci_low"] == pytest.approx(1.5) and s["ci_high"] == pytest.approx(6.5)
    assert bootstrap_mean([5.0], None, 10, 0)["std"] == 0.0


def test_fast_enough_for_a_large_prompt_set():
    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(1600), 3)
    a, b = rng.random(groups.size), rng.random(groups.size)
    compare_paired(a[:30], b[:30], groups[:30], resamples=10)  # warm up numpy
    start = time.perf_counter()
    compare_paired(a, b, groups, resamples=2000)
    bootstrap_mean(a, groups, 2000, 0)
    assert time.perf_counter() - start < 1.0

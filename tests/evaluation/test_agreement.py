import math

import numpy as np
import pytest

from diffalign.evaluation.agreement import (
    THRESHOLD_SWEEP,
    agreement,
    parse_thresholds,
    tie_aware_agreement,
)
from diffalign.evaluation.winrate import wilson_interval

NAN = float("nan")


def test_agreement_counts_excludes_human_ties_and_counts_score_ties_apart():
    #          agree  agree  disagree  score tie  human tie  unscored  agree  missing label
    s0 = [0.9, 0.1, 0.7, 0.5, 0.3, NAN, 0.4, 0.8]
    s1 = [0.2, 0.6, 0.1, 0.5, 0.9, 0.2, 0.3, 0.1]
    labels = [1, 0, 0, 1, 0.5, 1, 1.0, None]
    result = agreement(s0, s1, labels)
    assert (result.agreed, result.disagreed, result.score_ties) == (3, 1, 1)
    assert (result.label_ties, result.unscored, result.other_labels) == (1, 1, 1)
    assert result.n == 4
    assert result.accuracy == pytest.approx(0.75)
    assert (result.ci_low, result.ci_high) == pytest.approx(wilson_interval(3, 4))
    assert result.as_dict()["n"] == 4


def test_agreement_tolerance_turns_close_scores_into_ties():
    s0, s1, labels = [0.50, 0.60, 0.10], [0.49, 0.30, 0.12], [0, 1, 0]
    exact = agreement(s0, s1, labels)
    assert (exact.agreed, exact.disagreed, exact.score_ties) == (2, 1, 0)
    loose = agreement(s0, s1, labels, tie_tolerance=0.05)
    assert (loose.agreed, loose.disagreed, loose.score_ties) == (1, 0, 2)
    assert loose.accuracy == 1.0


def test_agreement_known_interval_and_empty_case():
    s0 = np.r_[np.ones(70), np.zeros(30)]
    result = agreement(s0, np.full(100, 0.5), np.ones(100))
    assert result.accuracy == pytest.approx(0.70)
    assert result.ci_low == pytest.approx(0.6041, abs=1e-3) and result.ci_high == pytest.approx(0.7810, abs=1e-3)
    empty = agreement([0.1], [0.2], [0.5])
    assert empty.n == 0 and math.isnan(empty.accuracy) and empty.as_dict()["accuracy"] is None


def test_agreement_rejects_mismatched_lengths_and_negative_tolerance():
    with pytest.raises(ValueError, match="one score per image"):
        agreement([0.1, 0.2], [0.3], [1, 0])
    with pytest.raises(ValueError, match=">= 0"):
        agreement([0.1], [0.2], [1], tie_tolerance=-1)


def test_tie_aware_credit_follows_the_pickscore_protocol():
    # logit_scale 1: (2, 0) gives p0 = sigmoid(2) = 0.881, |p1 - p0| = 0.762; (0, 0) gives a predicted tie.
    s0 = [2.0, 2.0, 0.0, 0.0, 2.0, 0.0]
    s1 = [0.0, 0.0, 0.0, 0.0, 0.0, 2.0]
    labels = [1, 0, 0.5, 1, 0.5, 1]
    strict = tie_aware_agreement(s0, s1, labels, logit_scale=1.0, threshold=0.0)
    # credits: 1, 0, 1 (tie = tie), 0.5 (predicted tie), 0.5 (human tie), 0
    assert strict.credit == pytest.approx(3.0)
    assert strict.pairs == 6 and strict.predicted_ties == 2 and strict.label_ties == 2
    assert strict.accuracy == pytest.approx(0.5)
    assert (strict.ci_low, strict.ci_high) == pytest.approx(wilson_interval(3, 6))
    loose = tie_aware_agreement(s0, s1, labels, logit_scale=1.0, threshold=0.8)
    # every pair is now a predicted tie: 0.5, 0.5, 1, 0.5, 1, 0.5
    assert loose.credit == pytest.approx(4.0) and loose.predicted_ties == 6
    sharper = tie_aware_agreement(s0, s1, labels, logit_scale=0.1, threshold=0.1)
    # logit_scale 0.1: |p1 - p0| = tanh(0.1) = 0.0997 <= 0.1, all ties again
    assert sharper.predicted_ties == 6


def test_tie_aware_excludes_unscored_and_unknown_labels():
    result = tie_aware_agreement([1.0, NAN, 1.0], [0.0, 0.0, 0.0], [1, 1, 0.7], logit_scale=10.0, threshold=0.1)
    assert (result.pairs, result.unscored, result.other_labels, result.credit) == (1, 1, 1, 1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tie_aware_agreement([1.0], [0.0], [1], logit_scale=1.0, threshold=2.0)


def test_parse_thresholds():
    assert parse_thresholds("0.1") == [0.1]
    assert parse_thresholds("0, 0.25,1") == [0.0, 0.25, 1.0]
    assert parse_thresholds("sweep") == list(THRESHOLD_SWEEP) and len(THRESHOLD_SWEEP) == 11
    for bad in ("abc", "1.5", ""):
        with pytest.raises(ValueError, match="--tie-aware"):
            parse_thresholds(bad)


def test_a_report_from_scores_merged_by_chunks_is_the_report_of_one_scoring(tmp_path):
    import random

    from diffalign.data.pairs import write_pair_table
    from diffalign.evaluation.agreement import evaluate_pairs, pair_items, pairs_report
    from diffalign.evaluation.score_job import ScoreJob, score_settings
    from diffalign.rewards import build_scorer
    from diffalign.synthetic.domain import random_spec
    from diffalign.synthetic.render import render

    rng = random.Random(0)
    rows = {"caption": [], "jpg_0": [], "jpg_1": [], "label_0": [1.0, 0.5, 0.0, None, 1.0], "label_1": [0.0] * 5}
    for _ in range(5):
        spec = random_spec(rng)
        rows["caption"].append(spec.caption)
        rows["jpg_0"].append(render(spec, rng)[0])
        rows["jpg_1"].append(render(random_spec(rng), rng)[0])
    table = str(write_pair_table(tmp_path / "pairs.parquet", rows))
    labels, items = pair_items(table)
    assert [(item.row, item.image) for item in items][::2] == [(0, "jpg_0"), (2, "jpg_0"), (4, "jpg_0")]  # decided
    labels, items = pair_items(table, tie_aware=True)
    assert sorted({item.row for item in items}) == [0, 1, 2, 4]  # and the human tie
    shapes = build_scorer("shapes")
    job = ScoreJob(items, 3, tmp_path / "report.json", score_settings(items, ["shapes"], {}, None, None, 3))
    job.open()
    run = job.run(lambda: [shapes], progress=False)
    expected, _ = evaluate_pairs(table, [shapes], 8, 0.01, [0.0, 0.5], progress=False)
    assert pairs_report(table, labels, run, 0.01, [0.0, 0.5]) == expected
    assert expected["scored_rows"] == 4 and expected["scorers"]["shapes"]["other_labels"] == 1

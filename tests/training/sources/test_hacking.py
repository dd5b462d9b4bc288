"""Telling reward hacking from the monitor's evaluations (`hacking`): streaks of rising training reward and falling
gold score, once per streak, ties and NaNs, the best evaluation and the warning's words."""

from __future__ import annotations

import json

import pytest

from diffalign.training.sources.hacking import (
    Evaluation,
    best_evaluation,
    hacking_streak,
    streak_length,
    warning_message,
)

NAN = float("nan")


def _history(rewards, golds, every=5):
    return [Evaluation(i * every, i * every * 2, r, g, {"shapes": g}) for i, (r, g) in enumerate(zip(rewards, golds))]


def _warnings(rewards, golds, patience):
    """The index of every evaluation that warns, evaluating the history as it grows (as a run does)."""
    history = _history(rewards, golds)
    return [i for i in range(len(history)) if hacking_streak(history[: i + 1], patience) is not None]


def test_a_streak_warns_once_when_it_reaches_the_patience():
    rewards = [NAN, 0.50, 0.55, 0.60, 0.65, 0.70]
    golds = [0.70, 0.71, 0.68, 0.64, 0.60, 0.55]
    # evaluation 0 has no training reward (no round sampled before it): the first transition cannot count
    assert [streak_length(_history(rewards, golds)[: i + 1]) for i in range(6)] == [0, 0, 1, 2, 3, 4]
    assert _warnings(rewards, golds, patience=3) == [4]
    assert hacking_streak(_history(rewards, golds)[:5], 3) == (1, 4)
    assert _warnings(rewards, golds, patience=1) == [2]


def test_a_broken_streak_warns_again_when_a_new_one_reaches_the_patience():
    rewards = [0.1, 0.2, 0.3, 0.2, 0.3, 0.4, 0.5]
    golds = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]  # evaluation 3: the reward fell, which breaks the streak
    assert _warnings(rewards, golds, patience=2) == [2, 5]


@pytest.mark.parametrize("what", ["reward tie", "gold tie", "gold rose"])
def test_a_tie_or_a_gold_rise_breaks_the_streak(what):
    rewards = [0.1, 0.2, 0.3, 0.4, 0.5]
    golds = [0.9, 0.8, 0.7, 0.6, 0.5]
    if what == "reward tie":
        rewards[2] = 0.2
    elif what == "gold tie":
        golds[2] = 0.8
    else:
        golds[2] = 0.85
    assert _warnings(rewards, golds, patience=2) == [4]  # 1-2 is no evidence: the streak starts again at 2
    assert _warnings([0.1, 0.2, 0.3, 0.4, 0.5], [0.9, 0.8, 0.7, 0.6, 0.5], patience=2) == [2]  # unbroken: once


def test_a_nan_gold_score_is_no_evidence_either_way():
    rewards = [0.1, 0.2, 0.3, 0.4, 0.5]
    golds = [0.9, 0.8, NAN, 0.6, 0.5]  # no image of evaluation 2 could be scored
    assert [streak_length(_history(rewards, golds)[: i + 1]) for i in range(5)] == [0, 1, 0, 0, 1]
    assert _warnings(rewards, golds, patience=2) == []
    assert best_evaluation(_history(rewards, golds)) == 0


def test_the_best_evaluation_is_the_first_of_the_highest_finite_gold_scores():
    assert best_evaluation(_history([0.1] * 4, [0.5, 0.7, 0.7, 0.6])) == 1
    assert best_evaluation(_history([0.1] * 2, [NAN, NAN])) is None
    assert best_evaluation([]) is None


def test_the_warning_says_what_rose_and_fell_where_the_best_weights_are_and_what_happens_next():
    history = _history([0.40, 0.61, 0.65, 0.70, 0.74], [0.66, 0.71, 0.70, 0.65, 0.58])
    streak = hacking_streak(history, 3)
    assert streak == (1, 4)
    assert warning_message(history, streak, "runs/x/best/", stopping=False) == (
        "reward hacking? over the last 3 evaluations (rounds 5-20) the training reward rose 0.61 -> 0.74 while the "
        "gold score fell 0.71 -> 0.58; the best gold score (0.71, round 5, step 10) is kept in runs/x/best/; "
        "rollout.monitor.stop=true would stop the run at such a warning")
    assert warning_message(history, streak, None, stopping=True) == (
        "reward hacking? over the last 3 evaluations (rounds 5-20) the training reward rose 0.61 -> 0.74 while the "
        "gold score fell 0.71 -> 0.58; the best gold score (0.71, round 5, step 10) was not kept "
        "(rollout.monitor.keep_best=false); stopping the run with the weights of round 20 (rollout.monitor.stop=true)")
    final = [*history[:4], Evaluation(17, 34, 0.74, 0.58, {}, final=True)]
    assert "(rounds 5-17 (the final weights))" in warning_message(final, hacking_streak(final, 3), None, False)
    assert warning_message(final, hacking_streak(final, 3), None, False).endswith("(rollout.monitor.keep_best=false)")


def test_an_evaluation_survives_a_checkpoints_json():
    evaluation = Evaluation(10, 20, NAN, 0.5, {"shapes": 0.5, "my.py:area": 0.25}, final=True)
    back = Evaluation.from_state(json.loads(json.dumps(evaluation.as_state())))
    assert back.round == 10 and back.step == 20 and back.gold == 0.5 and back.final
    assert back.parts == {"shapes": 0.5, "my.py:area": 0.25} and back.reward != back.reward  # NaN kept


def test_patience_below_one_is_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"rollout.monitor.patience must be at least 1, got 0"):
        hacking_streak(_history([0.1], [0.1]), 0)

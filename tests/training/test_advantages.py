"""The advantage phase: group, batch and per-prompt-tracked normalisation of rewards, against hand values."""

from __future__ import annotations

import json
import math

import pytest
import torch

from diffalign.training.advantages import PerPromptStatTracker, batch_advantages, group_advantages

NAN = math.nan
# Row 0: 1, 2, 6 → mean 3, deviations −2, −1, 3, population variance 14/3, std 2.160246899469287.
# Row 1: 4, NaN, 8 → mean 6, deviations −2, ·, 2, variance 4, std 2.
# All five finite: mean 4.2, squared deviations 10.24 + 4.84 + 3.24 + 0.04 + 14.44 = 32.8, /5 = 6.56,
# std 2.5612496949731396.
TABLE = [[1.0, 2.0, 6.0], [4.0, NAN, 8.0]]


def test_group_std_normalises_each_row_by_its_own_finite_rewards():
    advantages = group_advantages(torch.tensor(TABLE), std="group", eps=0.0)
    assert advantages.dtype == torch.float32
    assert advantages[0].tolist() == pytest.approx([-0.9258200997725514, -0.4629100498862757, 1.3887301496588271])
    assert advantages[1].tolist() == [-1.0, 0.0, 1.0]  # the NaN image gets exactly 0


def test_global_std_divides_the_group_deviations_by_the_rounds_std():
    advantages = group_advantages(torch.tensor(TABLE, dtype=torch.float64), std="global", eps=0.0)
    assert advantages.dtype == torch.float64
    assert advantages.flatten().tolist() == pytest.approx([
        -0.7808688094430303, -0.39043440472151514, 1.1713032141645454,  # −2, −1, 3 over 2.56125
        -0.7808688094430303, 0.0, 0.7808688094430303,
    ], rel=1e-12)


def test_a_group_with_fewer_than_two_scored_images_gets_zero_and_no_nan_escapes():
    rewards = torch.tensor([[NAN, 3.0, NAN], [NAN, NAN, NAN], [1.0, 3.0, 5.0]])
    for std in ("group", "global"):
        advantages = group_advantages(rewards, std=std)
        assert advantages[:2].tolist() == [[0.0] * 3] * 2
        assert advantages[2, 1].item() == 0.0 and advantages[2, 0].item() < 0 < advantages[2, 2].item()
    assert group_advantages(torch.full((2, 2), NAN)).tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_the_default_eps_keeps_float_noise_in_a_group_small():
    # deviations ±5e-7, std 5e-7: with flow_grpo's eps 1e-4, 5e-7 / (5e-7 + 1e-4) = 0.004975; with 1e-8, ≈ 0.98
    advantages = group_advantages(torch.tensor([[1.0, 1.000001]], dtype=torch.float64))
    assert advantages.tolist()[0] == pytest.approx([-0.004975124378109453, 0.004975124378109453], rel=1e-6)


def test_batch_advantages_normalise_over_the_whole_round():
    # finite 1, 3, 5, 7: mean 4, variance (9 + 1 + 1 + 9)/4 = 5, std √5 = 2.2360679775, plus eps 1e-8:
    # ∓3/2.2360679875 = ∓1.3416407805, ∓1/2.2360679875 = ∓0.4472135935
    advantages = batch_advantages(torch.tensor([1.0, NAN, 3.0, 5.0, 7.0], dtype=torch.float64))
    assert advantages.tolist() == pytest.approx(
        [-1.3416407804998738, 0.0, -0.44721359349995793, 0.44721359349995793, 1.3416407804998738], rel=1e-12)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: group_advantages(torch.tensor([1.0, 2.0])),
     "group_advantages: rewards must be a (prompts, images per prompt) table, not of shape (2,)"),
    (lambda: group_advantages(torch.ones(1, 2), std="prompt"),
     "group_advantages: std must be 'group' or 'global', not 'prompt'"),
    (lambda: group_advantages(torch.tensor([[1.0, 2.0], [3.0, -math.inf]])),
     "reward [1, 1] is -inf: a reward must be finite, or NaN for an image the reward model could not score"),
    (lambda: batch_advantages(torch.ones(2, 2)),
     "batch_advantages: rewards must be one per image, shape (N,), not (2, 2)"),
])
def test_bad_rewards_are_refused(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert str(error.value) == message


def _rounds():
    return [
        (["a", "a", "b"], [1.0, 3.0, 8.0]),
        (["a", "a", "b"], [5.0, NAN, 2.0]),
        (["a"], [7.0]),
    ]


def test_tracker_uses_the_round_until_min_count_then_the_buffer_and_keeps_the_last_buffer_size():
    tracker = PerPromptStatTracker(buffer_size=3, min_count=2)
    first, second, third = (tracker.update(p, torch.tensor(r, dtype=torch.float64)) for p, r in _rounds())
    # Every std below gets ddpo-pytorch's eps 1e-6 added.
    # Round 1: a's buffer [1, 3] reaches min_count → its mean 2, std 1: ∓1/1.000001.
    # b's buffer [8] is short → the round's mean 4, std √(26/3) = 2.9439203: 4/2.9439213 = 1.3587320.
    assert first.tolist() == pytest.approx([-0.9999990000010001, 0.9999990000010001, 1.3587319794352102], rel=1e-12)
    # Round 2: a's buffer [1, 3, 5]: mean 3, std √(8/3) = 1.6329932 → 2/1.6329942 = 1.2247441; the NaN gets 0 and
    # is not buffered; b's [8, 2]: mean 5, std 3 → −3/3.000001.
    assert second.tolist() == pytest.approx([1.2247441213920485, 0.0, -0.9999996666667778], rel=1e-12)
    # Round 3: a's buffer drops its oldest, [3, 5, 7]: mean 5, std √(8/3) → 1.2247441 (unbounded [1, 3, 5, 7]
    # would give 3/√5 = 1.342).
    assert third.tolist() == pytest.approx([1.2247441213920485], rel=1e-12)
    assert tracker.state_dict() == {"buffer_size": 3, "min_count": 2,
                                    "buffers": {"a": [3.0, 5.0, 7.0], "b": [8.0, 2.0]}}
    assert tracker.stats() == {"tracked_prompts": 2.0, "mean_buffer_length": 2.5}


def test_tracker_restored_from_its_json_state_continues_exactly_as_the_original():
    original = PerPromptStatTracker(buffer_size=3, min_count=2)
    rounds = [(p, torch.tensor(r)) for p, r in _rounds()]
    original.update(*rounds[0])
    restored = PerPromptStatTracker(buffer_size=3, min_count=2)
    restored.load_state_dict(json.loads(json.dumps(original.state_dict())))
    for prompts, rewards in rounds[1:]:
        assert torch.equal(restored.update(prompts, rewards), original.update(prompts, rewards))
    assert restored.state_dict() == original.state_dict()


def test_tracker_gives_nan_rewards_zero_and_buffers_nothing_for_them():
    tracker = PerPromptStatTracker(buffer_size=4, min_count=1)
    advantages = tracker.update(["a", "b"], torch.tensor([NAN, NAN]))
    assert advantages.tolist() == [0.0, 0.0] and advantages.dtype == torch.float32
    assert tracker.state_dict()["buffers"] == {} and tracker.stats() == {"tracked_prompts": 0.0,
                                                                          "mean_buffer_length": 0.0}
    assert tracker.update(["a", "a", "a"], torch.tensor([NAN, 2.0, 4.0])).tolist() == pytest.approx(
        [0.0, -0.999999, 0.999999], rel=1e-6)  # buffer [2, 4]: mean 3, std 1


@pytest.mark.parametrize(("state", "error", "message"), [
    ({"buffer_size": 3, "min_count": 2}, KeyError, "reward tracker state: the key 'buffers' is missing"),
    ({"buffer_size": 8, "min_count": 2, "buffers": {}}, ValueError,
     "reward tracker state: it was saved with buffer_size 8, this run has 3; resume with the saved value"),
    ({"buffer_size": 3, "min_count": 2, "buffers": {"a": [1.0, 2.0, 3.0, 4.0]}}, ValueError,
     "reward tracker state: the buffer of prompt 'a' must be a list of at most 3 finite numbers"),
    ({"buffer_size": 3, "min_count": 2, "buffers": {"a": [1.0, "2"]}}, ValueError,
     "reward tracker state: the buffer of prompt 'a' must be a list of at most 3 finite numbers"),
    ({"buffer_size": 3, "min_count": 2, "buffers": [1.0]}, ValueError,
     "reward tracker state: 'buffers' must map each prompt to its list of rewards"),
])
def test_a_bad_tracker_state_is_refused(state, error, message):
    tracker = PerPromptStatTracker(buffer_size=3, min_count=2)
    with pytest.raises(error) as raised:
        tracker.load_state_dict(state)
    assert raised.value.args[0] == message
    assert tracker.state_dict()["buffers"] == {}


def test_tracker_refuses_unusable_settings_and_mismatched_prompts():
    with pytest.raises(ValueError) as error:
        PerPromptStatTracker(buffer_size=4, min_count=8)
    assert str(error.value) == ("PerPromptStatTracker: min_count (8) exceeds buffer_size (4): a buffer could never "
                                "hold enough rewards, so every advantage would use the round's statistics")
    with pytest.raises(ValueError) as error:
        PerPromptStatTracker(buffer_size=4, min_count=2).update(["a"], torch.tensor([1.0, 2.0]))
    assert str(error.value) == ("PerPromptStatTracker.update: 1 prompts for rewards of shape (2,); give one prompt "
                                "per reward")

"""Several rewards at once (`rollout.rewards`): the mapping's checks, the judge's weighted sum and parts, the
advantages of GRPO and DDPO with per-reward or summed normalisation against hand-computed numbers, the
per-reward log lines, round_scores.jsonl and a short online run with two rewards that resumes without
duplicating a line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from diffalign.cli.errors import expected_failure
from diffalign.config.core import load_config
from diffalign.config.objectives import DDPOConfig, GRPOConfig
from diffalign.config.schema import RolloutConfig, RunConfig
from diffalign.rewards import available_scorers, build_scorer, register_scorer, to_float_images
from diffalign.rewards.weighted import WeightedScorer, WeightedScorers, check_weighted, parse_weighted
from diffalign.training.advantages import (
    PerPromptStatTracker,
    batch_advantages,
    group_advantages,
    group_advantages_of,
    mixed_advantages,
)
from diffalign.training.checkpoint import list_checkpoints
from diffalign.training.loop import train
from diffalign.training.methods.ddpo import DDPO
from diffalign.training.methods.grpo import GRPO
from diffalign.training.sources.judges import RewardJudge, judge_description, rollout_rewards
from diffalign.training.sources.online import round_entry
from diffalign.training.sources.rollouts import Rollouts
from diffalign.training.sources.round_log import reward_part_curves, write_round
from diffalign.training.sources.round_scores import read_round_scores, round_score_lines, write_round_scores

NAN = float("nan")
BRIGHTNESS = "test-mixture-brightness"  # its own name: tests/feedback registers another "test-brightness"


class Brightness:
    """A second reward on another scale than shapes': the mean grey level (0-255) times `scale`."""

    name = BRIGHTNESS
    scale = "grey level"
    logit_scale = 1.0

    def __init__(self, device: str | None = None, scale: float = 1.0) -> None:
        if not isinstance(scale, (int, float)):
            raise ValueError(f"scale must be a number, not {scale!r}")
        self.device, self.factor = device, scale

    def score(self, images, prompts):
        return to_float_images(images).mean(dim=(1, 2, 3)) * 255 * self.factor


if BRIGHTNESS not in available_scorers():
    register_scorer(BRIGHTNESS)(Brightness)


# -- the mapping -------------------------------------------------------------------------------------------------


def test_the_mapping_gives_weights_and_options_in_order_and_an_empty_one_is_rollout_reward():
    entries = parse_weighted({"shapes": 1, BRIGHTNESS: {"weight": -0.5, "scale": 2.0}}, "rollout.rewards")
    assert entries == [WeightedScorer("shapes", 1.0, {}, "rollout.rewards.shapes"),
                       WeightedScorer(BRIGHTNESS, -0.5, {"scale": 2.0}, f"rollout.rewards.{BRIGHTNESS}")]
    assert rollout_rewards(RolloutConfig(reward="shapes")) == [WeightedScorer("shapes", 1.0, {}, "rollout.reward")]
    assert rollout_rewards(RolloutConfig(reward="shapes", rewards={BRIGHTNESS: 2})) == [
        WeightedScorer(BRIGHTNESS, 2.0, {}, f"rollout.rewards.{BRIGHTNESS}")]


@pytest.mark.parametrize("rewards, message", [
    ({"shapes": "nan"}, "rollout.rewards.shapes: 'nan' is neither a weight (a number) nor a mapping {weight: W, "
                        "OPTION: VALUE, ...}"),
    ({"shapes": float("inf")}, "rollout.rewards.shapes: the weight inf is not a finite number"),
    ({"shapes": 1, "clip": NAN}, "rollout.rewards.clip: the weight nan is not a finite number"),
    ({"shapes": True}, "rollout.rewards.shapes: True is neither a weight (a number) nor a mapping {weight: W, "
                       "OPTION: VALUE, ...}"),
    ({"shapes": [1.0]}, "rollout.rewards.shapes: [1.0] is neither a weight (a number) nor a mapping {weight: W, "
                        "OPTION: VALUE, ...}"),
    ({"shapes": None}, "rollout.rewards.shapes: None is neither a weight (a number) nor a mapping {weight: W, "
                       "OPTION: VALUE, ...}"),
    ({"shapes": {"weight": "x"}}, "rollout.rewards.shapes.weight: the weight 'x' is not a finite number"),
    ({"shapes": {"scale": 2}}, "rollout.rewards.shapes: {'scale': 2} has no weight; give "
                               "rollout.rewards.shapes={weight: W, OPTION: VALUE, ...} or rollout.rewards.shapes=W "
                               "(a scorer name holding dots (hpsv2.1, my_rewards.py:NAME) must be written inside "
                               "the mapping, KEY={hpsv2.1: 1.0}, not KEY.hpsv2.1=1.0)"),
    ({"shapes": 0, "clip": 0.0}, "rollout.rewards: every weight is 0, so the reward would be 0 for every image; "
                                 "give at least one scorer a weight"),
])
def test_a_bad_mapping_is_a_one_line_error_naming_its_key(rewards, message):
    with pytest.raises(ValueError) as error:
        parse_weighted(rewards, "rollout.rewards")
    assert str(error.value) == message and expected_failure(error.value) == message


def test_a_dotted_name_split_by_the_command_line_is_explained():
    cfg = load_config(RunConfig, None, ["rollout.rewards.hpsv2.1=2"])  # the override splits the name at its dot
    with pytest.raises(ValueError, match=r"^rollout.rewards.hpsv2: \{'1': 2\} has no weight; .* not "
                                         r"KEY.hpsv2.1=1.0\)$"):
        rollout_rewards(cfg.rollout)


def test_unknown_names_and_scorers_that_cannot_be_built_name_the_entry():
    entries = parse_weighted({"shapes": 1, "shapez": 1}, "rollout.rewards")
    with pytest.raises(KeyError) as error:
        check_weighted(entries)
    assert expected_failure(error.value).startswith(
        "rollout.rewards.shapez: unknown scorer 'shapez'; did you mean 'shapes'? Available: ")
    with pytest.raises(ValueError) as error:
        WeightedScorers.build(parse_weighted({"shapes": {"weight": 1, "colour": "red"}}, "rollout.rewards"), "cpu")
    assert str(error.value).startswith("rollout.rewards.shapes: scorer 'shapes' has no option 'colour' (")
    with pytest.raises(ValueError) as error:
        WeightedScorers.build(parse_weighted({BRIGHTNESS: {"weight": 1, "scale": "x"}}, "rollout.rewards"), "cpu")
    assert expected_failure(error.value) == (f"rollout.rewards.{BRIGHTNESS}: cannot build scorer {BRIGHTNESS!r} "
                                             "(device='cpu', scale='x'): ValueError: scale must be a number, not 'x'")
    built = WeightedScorers.build(parse_weighted({BRIGHTNESS: {"weight": 1, "device": "meta"}}, "r"), "cpu")
    assert built.scorers[0].device == "meta"  # an option may set the device


def test_train_refuses_a_bad_mapping_before_loading_a_model(tmp_path):
    for rewards, kind, message in [
        ("{shapes: 1, shapez: 0.5}", KeyError, "rollout.rewards.shapez: unknown scorer 'shapez'"),
        ("{shapes: {scale: 2}}", ValueError, "rollout.rewards.shapes: {'scale': 2} has no weight"),
    ]:
        cfg = load_config(RunConfig, None, [
            "model.pretrained=/nowhere", "objective.name=grpo", f"rollout.rewards={rewards}",
            f"train.output_dir={tmp_path / 'run'}"])
        with pytest.raises(kind) as error:
            train(cfg)
        assert expected_failure(error.value).startswith(message)
    assert not (tmp_path / "run").exists()


# -- the judge ---------------------------------------------------------------------------------------------------


class RaisesOnWhite:
    """Brightness, except that a batch holding an all-white image raises."""

    name = BRIGHTNESS

    def __init__(self, scorer) -> None:
        self.scorer = scorer

    def score(self, images, prompts):
        if any(int(np.asarray(image).min()) == 255 for image in images):
            raise ValueError("too bright")
        return self.scorer.score(images, prompts)


class Images:
    """Stands for a trajectory record: the judge reads its images and prompts."""

    def __init__(self, images: np.ndarray, prompts: list[str]) -> None:
        self.images, self.prompts = images, prompts


def test_the_judge_sums_the_weighted_rewards_keeps_each_and_nans_an_image_one_reward_cannot_score():
    prompts = ["a red circle on a black background", "a small blue square on a white background"]
    images = np.stack([np.full((32, 32, 3), 50 * i, np.uint8) for i in range(4)])
    images[3] = 255
    trajectory = Images(images, [p for p in prompts for _ in range(2)])
    entries = parse_weighted({"shapes": 1.0, BRIGHTNESS: {"weight": 0.5, "scale": 2.0}}, "rollout.rewards")
    judge = RewardJudge(entries, torch.device("cpu"), batch_size=3)
    assert judge.weights == {"shapes": 1.0, BRIGHTNESS: 0.5}
    judge.rewards.scorers[1] = RaisesOnWhite(judge.rewards.scorers[1])

    rewards, parts = judge.judge(3, prompts, trajectory)
    shapes = build_scorer("shapes").score(images, trajectory.prompts).float().view(2, 2)
    assert list(parts) == ["shapes", BRIGHTNESS] and rewards.shape == (2, 2) and rewards.dtype == torch.float32
    torch.testing.assert_close(parts["shapes"], shapes)  # the other reward's failure leaves this one's score
    torch.testing.assert_close(parts[BRIGHTNESS], torch.tensor([[0.0, 100.0], [200.0, NAN]]), equal_nan=True)
    torch.testing.assert_close(rewards, shapes + 0.5 * torch.tensor([[0.0, 100.0], [200.0, NAN]]), equal_nan=True)
    assert judge.failures == [f"round 3 image 3 ({prompts[1]!r}): {BRIGHTNESS}: too bright"]
    total, failures = judge.score(trajectory)  # what the base comparison reads: the summed reward
    torch.testing.assert_close(total, rewards.flatten(), equal_nan=True)
    assert [f.index for f in failures] == [3]


def test_the_run_names_the_rewards_that_judge_it_and_their_weights():
    assert judge_description({"shapes": 1.0}, "per_reward") == "shapes"
    assert judge_description({"hpsv2": -1.0}, "per_reward") == "-1 x hpsv2"  # one reward, minimised
    assert judge_description({"hpsv2": 1.0, "pickscore": 0.5}, "sum") == \
        "1 x hpsv2 + 0.5 x pickscore (rollout.reward_normalisation=sum)"
    assert judge_description({}, "sum") == "people (diffalign label)"


# -- advantages --------------------------------------------------------------------------------------------------

# 2 prompts x 3 images; reward a (weight 1) on a unit scale, reward b (weight 0.5) on a scale 10x larger
A = torch.tensor([[1.0, 2.0, 3.0], [2.0, 2.0, 5.0]])
B = torch.tensor([[30.0, 10.0, 20.0], [0.0, 60.0, 0.0]])
SUMMED = A + 0.5 * B  # [[16, 7, 13], [2, 32, 5]]


def mixed_round(normalisation: str, a: torch.Tensor = A, b: torch.Tensor = B, prompts=("p0", "p1")) -> Rollouts:
    return Rollouts(0, list(prompts), None, a + 0.5 * b, reward_parts={"a": a, "b": b},
                    reward_weights={"a": 1.0, "b": 0.5}, normalisation=normalisation)


def test_grpo_per_reward_normalises_each_reward_in_its_group_and_sums_the_weighted_advantages():
    # (r - mean) / (population std + 1e-4), per row:
    # a row 0 [1, 2, 3]:    mean 2,  std sqrt(2/3) = 0.816497 -> [-1.224595, 0, 1.224595]
    # a row 1 [2, 2, 5]:    mean 3,  std sqrt(2) = 1.414214   -> [-0.707057, -0.707057, 1.414114]
    # b row 0 [30, 10, 20]: mean 20, std 8.164966            -> [1.224730, -1.224730, 0]
    # b row 1 [0, 60, 0]:   mean 20, std 28.284271           -> [-0.707104, 1.414209, -0.707104]
    # a + 0.5 b
    expected = [[-0.612230, -0.612365, 1.224595], [-1.060609, 0.0000475, 1.060561]]
    for method in (GRPO(GRPOConfig()), None):
        rollouts = mixed_round("per_reward")
        got = method.advantages(rollouts) if method else group_advantages_of(rollouts)
        assert got.dtype == torch.float32
        for row, want in zip(got.tolist(), expected):
            assert row == pytest.approx(want, abs=2e-6)


def test_grpo_sum_normalises_the_weighted_sum():
    # a + 0.5 b: row 0 [16, 7, 13] mean 12, std sqrt(14) = 3.741657; row 1 [2, 32, 5] mean 13, std 13.490738
    expected = [[1.069016, -1.336270, 0.267254], [-0.815368, 1.408363, -0.592995]]
    got = GRPO(GRPOConfig()).advantages(mixed_round("sum"))
    for row, want in zip(got.tolist(), expected):
        assert row == pytest.approx(want, abs=2e-6)
    assert torch.equal(got, group_advantages(SUMMED))


def test_ddpo_keeps_one_per_prompt_tracker_per_reward_across_rounds_and_in_its_state():
    method = DDPO(DDPOConfig(buffer_size=4, min_count=3))
    first = method.advantages(mixed_round("per_reward"))
    # round 0: each prompt has its 3 rewards buffered (min_count 3), so its own statistics: the group's, eps 1e-6
    expected = [[-0.612371, -0.612372, 1.224743], [-1.060660, 0.0000005, 1.060659]]
    for row, want in zip(first.tolist(), expected):
        assert row == pytest.approx(want, abs=2e-6)
    state = json.loads(json.dumps(method.state_dict()))
    assert state["tracker"]["buffers"] == {}  # the summed reward's, unused with per_reward
    assert state["reward_trackers"]["a"]["buffers"] == {"p0": [1.0, 2.0, 3.0], "p1": [2.0, 2.0, 5.0]}
    assert state["reward_trackers"]["b"]["buffers"] == {"p0": [30.0, 10.0, 20.0], "p1": [0.0, 60.0, 0.0]}

    # round 1, prompt p0 only: a = [4, 4, 4] buffers to its last 4, [3, 4, 4, 4]: mean 3.75, std 0.433013, so
    # (4 - 3.75) / (0.433013 + 1e-6) = 0.577349 each; b = [20, 20, 20]: buffer [20, 20, 20, 20], std 0: 0 each
    second_round = mixed_round("per_reward", torch.full((1, 3), 4.0), torch.full((1, 3), 20.0), prompts=("p0",))
    restored = DDPO(DDPOConfig(buffer_size=4, min_count=3))
    restored.load_state_dict(state)
    for ddpo in (method, restored):
        assert ddpo.advantages(second_round).tolist() == [pytest.approx([0.577349] * 3, abs=2e-6)]


def test_ddpo_without_per_promp_statistics_normalises_each_reward_over_the_round():
    # a over all six [1, 2, 3, 2, 2, 5]: mean 2.5, std 1.258306; b [30, 10, 20, 0, 60, 0]: mean 20, std 20.816660
    expected = [-0.951887, -0.637552, 0.397360, -0.877744, 0.563409, 1.506414]
    got = DDPO(DDPOConfig(per_prompt_stats=False)).advantages(mixed_round("per_reward"))
    assert got.flatten().tolist() == pytest.approx(expected, abs=2e-6)
    summed = DDPO(DDPOConfig(per_prompt_stats=False)).advantages(mixed_round("sum"))
    assert torch.equal(summed.flatten(), batch_advantages(SUMMED.flatten()))


@pytest.mark.parametrize("normalisation", ["per_reward", "sum"])
def test_one_reward_gives_exactly_todays_advantages_in_both_modes(normalisation):
    rewards = torch.tensor([[0.1, 0.7, 0.4], [0.6, 0.2, NAN]])
    one = Rollouts(0, ["p0", "p1"], None, rewards.clone(), reward_parts={"shapes": rewards.clone()},
                   reward_weights={"shapes": 1.0}, normalisation=normalisation)
    assert torch.equal(GRPO(GRPOConfig()).advantages(one), group_advantages(rewards))
    assert torch.equal(GRPO(GRPOConfig(std="global")).advantages(one), group_advantages(rewards, std="global"))
    assert torch.equal(DDPO(DDPOConfig(per_prompt_stats=False)).advantages(one).flatten(),
                       batch_advantages(rewards.flatten()))
    ddpo, tracker = DDPO(DDPOConfig(buffer_size=4, min_count=2)), PerPromptStatTracker(4, 2)
    prompts = ["p0"] * 3 + ["p1"] * 3
    for _ in range(2):
        assert torch.equal(ddpo.advantages(one).flatten(), tracker.update(prompts, rewards.flatten()))
    assert ddpo.state_dict() == {"tracker": tracker.state_dict()}  # today's state layout


def test_an_image_one_reward_could_not_score_is_left_out_of_every_rewards_statistics():
    a = torch.tensor([[1.0, 2.0, 3.0]])
    b = torch.tensor([[10.0, 30.0, NAN]])  # b failed on image 2: the summed reward is NaN there
    got = mixed_advantages(a + b, {"a": a, "b": b}, {"a": 1.0, "b": 1.0}, "per_reward",
                           lambda _, r: group_advantages(r))
    # a is normalised over images 0 and 1 only ([1, 2]: ±0.5 / (0.5 + 1e-4)), b likewise ([10, 30]: ±10 / 10.0001)
    both = 0.5 / 0.5001 + 10 / 10.0001
    assert got.tolist()[0] == pytest.approx([-both, both, 0.0], abs=1e-6)
    assert got[0, 2].item() == 0.0


def test_mixed_advantages_refuses_an_unknown_mode_and_a_part_without_weight():
    with pytest.raises(ValueError, match=r"^reward normalisation must be one of per_reward, sum, not 'mean'$"):
        mixed_advantages(A, {"a": A}, {"a": 1.0}, "mean", lambda _, r: r)
    with pytest.raises(ValueError, match=r"^mixed_advantages: no weight for the reward\(s\) 'b'$"):
        mixed_advantages(A, {"a": A, "b": B}, {"a": 1.0}, "per_reward", lambda _, r: r)


def test_take_keeps_each_rewards_scores_with_its_images():
    rollouts = mixed_round("per_reward")
    rollouts.trajectories = _Rows(6)
    groups = rollouts.take([1, 0], "prompt")
    assert torch.equal(groups.reward_parts["a"], A[[1, 0]]) and torch.equal(groups.reward_parts["b"], B[[1, 0]])
    images = rollouts.take([5, 0], "image")
    assert images.reward_parts["b"].tolist() == [[0.0], [30.0]] and images.rewards.tolist() == [[5.0], [16.0]]
    assert (images.reward_weights, images.normalisation) == ({"a": 1.0, "b": 0.5}, "per_reward")


class _Rows:
    def __init__(self, count: int) -> None:
        self.count = count

    def select(self, index):
        return index


# -- the logs ----------------------------------------------------------------------------------------------------


def test_a_rounds_line_gets_each_rewards_mean_and_std_only_with_several():
    entry = round_entry(mixed_round("per_reward"), None, 1.0, 2.0)
    # a: [1, 2, 3, 2, 2, 5] mean 2.5, sample std sqrt(9.5 / 5); b: [30, 10, 20, 0, 60, 0] mean 20, sqrt(2600 / 5)
    assert entry["reward/a/mean"] == pytest.approx(2.5) and entry["reward/a/std"] == pytest.approx(math.sqrt(1.9))
    assert entry["reward/b/mean"] == pytest.approx(20.0) and entry["reward/b/std"] == pytest.approx(math.sqrt(520))
    assert entry["reward_mean"] == pytest.approx(12.5)
    one = Rollouts(0, ["p0", "p1"], None, A, reward_parts={"a": A}, reward_weights={"a": 1.0})
    assert not [key for key in round_entry(one, None, 1.0, 2.0) if key.startswith("reward/")]


def test_reward_part_curves_put_every_reward_on_its_first_rounds_std():
    entries = [{"round": 0, "reward/a/mean": 0.5, "reward/a/std": 0.1, "reward/b/mean": 20.0, "reward/b/std": 0.0},
               {"round": 1, "reward/a/mean": 0.7, "reward/a/std": 0.1, "reward/b/mean": 10.0, "reward/b/std": 5.0},
               {"round": 2, "reward/a/mean": NAN, "reward/a/std": 0.0, "reward/b/mean": 30.0, "reward/b/std": 5.0}]
    curves = reward_part_curves(entries)
    rounds, change, first, last = curves["a"]
    assert rounds == [0, 1, 2] and change[:2].tolist() == pytest.approx([0.0, 2.0]) and np.isnan(change[2])
    assert (first, last) == (0.5, 0.7)
    rounds, change, first, last = curves["b"]  # round 0's std is 0: round 1's, 5, is the unit
    assert change.tolist() == pytest.approx([0.0, -2.0, 2.0]) and (first, last) == (20.0, 30.0)
    assert reward_part_curves([{"round": 0, "reward_mean": 1.0}]) == {}


def test_round_scores_lines_hold_every_images_reward_and_parts():
    rollouts = mixed_round("per_reward", b=torch.tensor([[30.0, 10.0, 20.0], [0.0, 60.0, NAN]]))
    lines = round_score_lines(rollouts)
    assert len(lines) == 6
    assert lines[1] == {"round": 0, "prompt": "p0", "image": 1, "reward": 7.0, "parts": {"a": 2.0, "b": 10.0}}
    assert lines[5] == {"round": 0, "prompt": "p1", "image": 5, "reward": None, "parts": {"a": 5.0, "b": None}}


def _round(round_: int) -> Rollouts:
    rollouts = mixed_round("per_reward")
    rollouts.round = round_
    return rollouts


def test_round_scores_append_and_a_redone_round_replaces_its_lines_and_the_later_ones(tmp_path):
    log = tmp_path / "out" / "round_scores.jsonl"
    for r in range(3):
        write_round_scores(log, _round(r))
    assert [line["round"] for line in read_round_scores(log)] == [0] * 6 + [1] * 6 + [2] * 6
    write_round_scores(log, _round(1))  # a run resumed inside round 1
    assert [line["round"] for line in read_round_scores(log)] == [0] * 6 + [1] * 6
    with log.open("a") as cut:
        cut.write('{"round": 1, "prompt": "p0", "ima')  # a process killed while appending round 2
    write_round_scores(log, _round(2))
    assert [line["round"] for line in read_round_scores(log)] == [0] * 6 + [1] * 6 + [2] * 6
    assert read_round_scores(log) == [line for r in range(3) for line in round_score_lines(_round(r))]


def test_a_broken_line_inside_round_scores_is_an_error_naming_the_file_and_line(tmp_path):
    log = tmp_path / "round_scores.jsonl"
    write_round_scores(log, _round(0))
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:2] + ["{oops"] + lines[2:]) + "\n")
    with pytest.raises(ValueError) as error:
        write_round_scores(log, _round(0))
    assert str(error.value) == (f"{log} line 3: not valid JSON (Expecting property name enclosed in double quotes "
                                "at column 2); fix or delete that line")
    log.write_text('[1, 2]\n{"round": 0}\n')
    with pytest.raises(ValueError, match=r"line 1: not an image's line \(a JSON object with an integer \"round\"\)"):
        write_round_scores(log, _round(0))


# -- an online run -----------------------------------------------------------------------------------------------


def _cfg(model, out, *extra):
    return load_config(RunConfig, None, [
        f"model.pretrained={model}", "objective.name=ddpo", "objective.timestep_fraction=0.5", "rollout.steps=4",
        "rollout.prompts_per_round=2", "rollout.images_per_prompt=2", "rollout.sample_batch_size=4",
        "rollout.compare_base=false", "train.batch_size=2", "train.max_steps=4", "train.checkpoint_every=1",
        "train.keep_checkpoints=4", "train.learning_rate=3e-2", "train.warmup_steps=0", "train.trackers=[]",
        "validation.every=0", "objective.clip_range=0.2", "objective.min_count=2", "objective.buffer_size=4",
        f"rollout.rewards={{shapes: 1.0, {BRIGHTNESS}: {{weight: 0.01, scale: 2.0}}}}",
        f"train.output_dir={out}", *extra])


def test_an_online_run_with_two_rewards_logs_each_and_resumes_without_duplicate_lines(tiny_models, tmp_path,
                                                                                       capsys):
    # 2 prompts x 2 images a round, 2 images a micro-batch, 2 substeps: 2 optimizer steps a round, 2 rounds
    out = tmp_path / "run"
    train(_cfg(tiny_models["sd15"], out))
    assert f"judged by 1 x shapes + 0.01 x {BRIGHTNESS} (rollout.reward_normalisation=per_reward)" in \
        capsys.readouterr().out
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1]
    for key in ("reward/shapes/mean", "reward/shapes/std", f"reward/{BRIGHTNESS}/mean", f"reward/{BRIGHTNESS}/std"):
        assert all(math.isfinite(r[key]) for r in rounds), key
    scores = read_round_scores(out / "round_scores.jsonl")
    assert [(s["round"], s["image"]) for s in scores] == [(r, i) for r in range(2) for i in range(4)]
    for line in scores:
        assert line["reward"] == pytest.approx(line["parts"]["shapes"] + 0.01 * line["parts"][BRIGHTNESS])
    for r, entry in enumerate(rounds):
        mine = [s["parts"][BRIGHTNESS] for s in scores if s["round"] == r]
        assert entry[f"reward/{BRIGHTNESS}/mean"] == pytest.approx(sum(mine) / 4, rel=1e-5)
    assert (out / "rounds.png").is_file()
    method_state = json.loads((list_checkpoints(out)[-1] / "method-0.json").read_text())
    assert "reward_trackers" in json.dumps(method_state)

    log = out / "round_scores.jsonl"
    before = log.read_text()
    step_3 = list_checkpoints(out)[-1]  # the last step's weights are the run's result, not a checkpoint
    assert step_3.name == "step-00000003" and (step_3 / "rollouts-0.json").is_file()
    # killed inside round 1 (step 3 of 4), before its lines were written: the resumed run writes them from the
    # checkpoint's rollouts (the round is not sampled again)
    log.write_text("".join(line for line in before.splitlines(keepends=True) if line.startswith('{"round": 0,')))
    train(_cfg(tiny_models["sd15"], out, f"train.resume={step_3}"))
    assert log.read_text() == before
    # resumed from there again, with round 1's lines already written: they are replaced, not repeated
    train(_cfg(tiny_models["sd15"], out, f"train.resume={step_3}"))
    assert log.read_text() == before
    again = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in again] == [0, 1]
    assert again[1]["reward/shapes/mean"] == rounds[1]["reward/shapes/mean"]

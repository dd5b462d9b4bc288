"""The phases of an online round, each on its own: prompts and training order (`round_prompts`), sampling
(`round_sampling`), the round record (`rollouts`), the reward judge (`judges`), the win rate against the base
model (`base_comparison`) and the per-round log (`round_log`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from diffalign.cli.errors import expected_failure
from diffalign.config.schema import ModelConfig, RolloutConfig
from diffalign.data.order import derive_seed
from diffalign.models.conditioning import TextConditioning
from diffalign.models.loading import load_parts
from diffalign.rewards import build_scorer
from diffalign.sampling.trajectory import Trajectory
from diffalign.training.checkpoint import load_state_files, save_state_files
from diffalign.training.sources import round_log
from diffalign.training.sources.base_comparison import base_win_rate, win_rate
from diffalign.training.sources.judges import RewardJudge
from diffalign.training.sources.rollouts import (
    Rollouts,
    concat_trajectories,
    trajectory_from_state,
    trajectory_state,
)
from diffalign.training.sources.round_log import plot_rounds, write_round
from diffalign.training.sources.round_prompts import epoch_order, micro_batch_units, process_share, prompt_order
from diffalign.training.sources.round_sampling import SHARED_NOISE_TAG, image_seeds, initial_noise, sample_prompts

PROMPTS = ["a red circle on a black background", "a small blue square on a white background",
           "a large green triangle on a black background", "a white square on a red background"]


# -- prompts phase and training order ------------------------------------------------------------------------


@pytest.mark.parametrize("count, per_round", [(5, 2), (5, 5), (3, 7), (4, 3)])
def test_prompt_order_is_a_seeded_permutation_per_pass_that_rounds_continue(count, per_round):
    rounds = [prompt_order(count, 11, r, per_round) for r in range(2 * count)]
    assert all(len(r) == per_round for r in rounds)
    flat = [i for r in rounds for i in r]
    passes = [flat[start : start + count] for start in range(0, len(flat) - count + 1, count)]
    assert len(passes) >= 2
    for visit in passes:
        assert sorted(visit) == list(range(count))  # every prompt once per pass, a pass split over rounds or not
    assert passes[0] != passes[1]  # a new permutation each pass
    assert rounds == [prompt_order(count, 11, r, per_round) for r in range(2 * count)]  # a function of the round
    assert flat == prompt_order(count, 11, 0, len(flat))  # rounds are consecutive slices of one sequence
    assert passes[0] != prompt_order(count, 12, 0, count)  # train.seed decides it


def test_process_share_is_contiguous_and_the_shares_make_up_the_items():
    items = list("abcdefgh")
    assert process_share(items, 0, 1) == items
    assert [process_share(items, r, 2) for r in range(2)] == [list("abcd"), list("efgh")]
    assert [process_share(items, r, 4) for r in range(4)] == [list("ab"), list("cd"), list("ef"), list("gh")]


def test_epoch_order_is_the_sampled_order_without_shuffle_and_a_seeded_permutation_per_pass_with_it():
    assert epoch_order(6, 0, 3, 1, shuffle=False) == list(range(6))
    orders = {(r, e): epoch_order(12, 5, r, e, shuffle=True) for r in range(3) for e in range(3)}
    for order in orders.values():
        assert sorted(order) == list(range(12)) and order != list(range(12))
    assert len({tuple(o) for o in orders.values()}) == len(orders)  # differs between passes and between rounds
    assert orders == {(r, e): epoch_order(12, 5, r, e, shuffle=True) for r in range(3) for e in range(3)}
    assert epoch_order(12, 6, 0, 0, shuffle=True) != orders[0, 0]  # train.seed decides it


def test_micro_batch_units_on_two_processes_make_up_one_process_with_twice_the_batch():
    order = [5, 3, 0, 7, 1, 6, 2, 4]
    # W = 2, B = 2: micro-batch j takes units 4j … 4j+3 of the order; process 0 the first two, process 1 the next two.
    assert micro_batch_units(order, 0, 2, 0, 2) == [5, 3]
    assert micro_batch_units(order, 0, 2, 1, 2) == [0, 7]
    assert micro_batch_units(order, 1, 2, 0, 2) == [1, 6]
    assert micro_batch_units(order, 1, 2, 1, 2) == [2, 4]
    assert micro_batch_units(order, 0, 4, 0, 1) == [5, 3, 0, 7]
    assert micro_batch_units(order, 1, 4, 0, 1) == [1, 6, 2, 4]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("batch", [1, 2, 3])
def test_micro_batch_units_are_independent_of_the_process_count(world, batch):
    micro_batches = 3
    order = epoch_order(batch * world * micro_batches, 1, 0, 0, shuffle=True)
    served = []
    for j in range(micro_batches):
        shares = [micro_batch_units(order, j, batch, rank, world) for rank in range(world)]
        assert all(len(share) == batch for share in shares)
        together = [u for share in shares for u in share]
        assert together == micro_batch_units(order, j, batch * world, 0, 1)
        served += together
    assert served == order  # a pass serves every unit once, in its order


# -- the round record -----------------------------------------------------------------------------------------


def fake_trajectory(count: int, steps: int = 2, first: int = 0) -> Trajectory:
    """`count` made-up trajectories whose every tensor row names its sample (first, first + 1, ...)."""
    ids = torch.arange(first, first + count, dtype=torch.float32)
    return Trajectory(
        latents=ids.view(-1, 1, 1, 1, 1).expand(count, steps + 1, 2, 2, 2).clone(),
        timesteps=torch.tensor([751, 251][:steps]), prev_timesteps=torch.tensor([251, -249][:steps]),
        log_probs=ids.view(-1, 1).repeat(1, steps) - torch.arange(steps),
        images=np.stack([np.full((4, 4, 3), i, np.uint8) for i in range(first, first + count)]),
        prompts=[f"prompt {i}" for i in range(first, first + count)],
        seeds=[100 + i for i in range(first, first + count)],
        eta=1.0, guidance=5.0,
        cond=TextConditioning(ids.view(-1, 1, 1).expand(count, 3, 4).clone(), ids.view(-1, 1).repeat(1, 4)),
        uncond=TextConditioning(-ids.view(-1, 1, 1).expand(count, 3, 4).clone(), -ids.view(-1, 1).repeat(1, 4)),
        time_ids=ids.view(-1, 1).repeat(1, 6),
    )


def sample_ids(trajectory: Trajectory) -> list[int]:
    """The sample each row of every per-sample field names (all must agree)."""
    ids = trajectory.latents[:, 0, 0, 0, 0].long().tolist()
    assert trajectory.log_probs[:, 0].long().tolist() == ids
    assert trajectory.images[:, 0, 0, 0].tolist() == ids
    assert trajectory.prompts == [f"prompt {i}" for i in ids] and trajectory.seeds == [100 + i for i in ids]
    assert trajectory.cond.hidden_states[:, 0, 0].long().tolist() == ids
    assert trajectory.cond.pooled[:, 0].long().tolist() == ids
    assert (-trajectory.uncond.hidden_states[:, 0, 0]).long().tolist() == ids
    assert trajectory.time_ids[:, 0].long().tolist() == ids
    return ids


def fake_round(groups: int = 3, images: int = 2) -> Rollouts:
    rewards = torch.arange(groups * images, dtype=torch.float32).view(groups, images) / 10
    return Rollouts(4, [f"group {p}" for p in range(groups)], fake_trajectory(groups * images), rewards,
                    substep=1, advantages=-rewards, epoch=2)


def test_select_takes_whole_groups_with_their_rewards_and_advantages():
    rollouts = fake_round()
    chosen = rollouts.select([2, 0])
    assert chosen.prompts == ["group 2", "group 0"] and len(chosen) == 2 and chosen.images_per_prompt == 2
    assert sample_ids(chosen.trajectories) == [4, 5, 0, 1]
    torch.testing.assert_close(chosen.rewards, torch.tensor([[0.4, 0.5], [0.0, 0.1]]))
    torch.testing.assert_close(chosen.advantages, -chosen.rewards)
    assert (chosen.round, chosen.substep, chosen.epoch) == (4, 1, 2)
    rollouts.advantages = None
    assert rollouts.select([1]).advantages is None


def test_select_images_makes_each_image_a_group_of_one():
    rollouts = fake_round()
    chosen = rollouts.select_images([5, 0, 3])
    assert chosen.prompts == ["group 2", "group 0", "group 1"] and chosen.images_per_prompt == 1
    assert sample_ids(chosen.trajectories) == [5, 0, 3]
    torch.testing.assert_close(chosen.rewards, torch.tensor([[0.5], [0.0], [0.3]]))
    torch.testing.assert_close(chosen.advantages, -chosen.rewards)
    assert (chosen.round, chosen.substep, chosen.epoch) == (4, 1, 2)
    assert chosen.units("image") == chosen.units("prompt") == 3


def test_take_and_units_follow_the_unit_kind():
    rollouts = fake_round(groups=3, images=2)
    assert rollouts.units("prompt") == 3 and rollouts.units("image") == 6
    assert sample_ids(rollouts.take([1], "prompt").trajectories) == [2, 3]
    assert sample_ids(rollouts.take([1], "image").trajectories) == [1]
    torch.testing.assert_close(rollouts.take([1, 4], "image").advantages, torch.tensor([[-0.1], [-0.4]]))


def test_concat_trajectories_joins_every_per_sample_field_in_chunk_order():
    one, two = fake_trajectory(2), fake_trajectory(3, first=2)
    joined = concat_trajectories([one, two])
    assert sample_ids(joined) == [0, 1, 2, 3, 4]
    assert isinstance(joined.images, np.ndarray) and joined.images.shape == (5, 4, 4, 3)
    assert torch.equal(joined.timesteps, one.timesteps) and (joined.eta, joined.guidance) == (1.0, 5.0)
    assert concat_trajectories([one]) is one
    bare = [fake_trajectory(2), fake_trajectory(1, first=2)]
    for t in bare:
        t.images, t.uncond, t.time_ids, t.log_probs = None, None, None, None
        t.cond = TextConditioning(t.cond.hidden_states)
    joined = concat_trajectories(bare)
    assert joined.images is None and joined.uncond is None and joined.time_ids is None and joined.log_probs is None
    assert joined.cond.pooled is None and joined.cond.hidden_states[:, 0, 0].tolist() == [0, 1, 2]


def assert_same_trajectory(a: Trajectory, b: Trajectory) -> None:
    for name in ("latents", "timesteps", "prev_timesteps", "log_probs", "time_ids"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert torch.equal(x, y) and x.dtype == y.dtype, name
    for name in ("cond", "uncond"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert torch.equal(x.hidden_states, y.hidden_states), name
            assert (x.pooled is None and y.pooled is None) or torch.equal(x.pooled, y.pooled), name
    assert (a.images is None) == (b.images is None)
    if a.images is not None:
        for images in (a.images, b.images):
            assert isinstance(images, np.ndarray) and images.dtype == np.uint8
        assert np.array_equal(a.images, b.images)
    assert (a.prompts, a.seeds, a.eta, a.guidance) == (b.prompts, b.seeds, b.eta, b.guidance)


def test_trajectory_state_round_trips_through_checkpoint_files(tmp_path):
    trajectory = fake_trajectory(3)
    trajectory.seeds = [derive_seed(0, 1, i) for i in range(3)]  # the 63-bit seeds a round draws
    assert_same_trajectory(trajectory_from_state(trajectory_state(trajectory)), trajectory)
    save_state_files(tmp_path, "round", {"trajectories": trajectory_state(trajectory)})
    back = trajectory_from_state(load_state_files(tmp_path, "round")["trajectories"])
    assert_same_trajectory(back, trajectory)
    bare = fake_trajectory(2)
    bare.images, bare.uncond, bare.time_ids = None, None, None
    bare.cond = TextConditioning(bare.cond.hidden_states)
    save_state_files(tmp_path, "bare", trajectory_state(bare))
    assert_same_trajectory(trajectory_from_state(load_state_files(tmp_path, "bare")), bare)


# -- sampling phase -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd15(tiny_models):
    parts = load_parts(ModelConfig(pretrained=str(tiny_models["sd15"])))
    parts.unet.eval()
    return parts


def rollout_config(**changes) -> RolloutConfig:
    return RolloutConfig(**{"images_per_prompt": 2, "steps": 2, "sample_batch_size": 8, **changes})


def x_t(parts, seed: int) -> torch.Tensor:
    """The initial noise the pipeline draws for one image of `seed`."""
    return torch.randn((parts.vae_config["latent_channels"], 8, 8), generator=torch.Generator().manual_seed(seed))


def test_shared_initial_noise_is_one_x_t_per_prompt(sd15):
    rollout = rollout_config(initial_noise="shared")
    trajectories = sample_prompts(sd15.unet, sd15, PROMPTS[:3], [0, 1, 2], 5, rollout, seed=7)
    latents = trajectories.latents.view(3, 2, *trajectories.latents.shape[1:])
    for p in range(3):
        assert torch.equal(latents[p, 0, 0], latents[p, 1, 0])
        assert torch.equal(latents[p, 0, 0], initial_noise(sd15, None, derive_seed(7, 5, p, SHARED_NOISE_TAG)))
        assert not torch.allclose(latents[p, 0, -1], latents[p, 1, -1])  # the η-noise of the steps tells them apart
    assert not torch.equal(latents[0, 0, 0], latents[1, 0, 0])
    assert trajectories.prompts == [p for p in PROMPTS[:3] for _ in range(2)]
    assert trajectories.seeds == [s for p in range(3) for s in image_seeds(7, 5, p, 2)]
    assert trajectories.images.shape == (6, 32, 32, 3) and trajectories.log_probs.shape == (6, 2)


def test_distinct_initial_noise_is_one_x_t_per_image_from_its_seed(sd15):
    rollout = rollout_config(initial_noise="distinct")
    trajectories = sample_prompts(sd15.unet, sd15, PROMPTS[:2], [0, 1], 5, rollout, seed=7)
    seeds = [s for p in range(2) for s in image_seeds(7, 5, p, 2)]
    assert trajectories.seeds == seeds and len(set(seeds)) == 4
    for row, seed in enumerate(seeds):
        assert torch.equal(trajectories.latents[row, 0], x_t(sd15, seed))
    assert not torch.equal(trajectories.latents[0, 0], trajectories.latents[1, 0])


@pytest.mark.parametrize("noise", ["shared", "distinct"])
def test_a_prompts_trajectories_depend_on_seed_round_and_position_only(sd15, noise):
    """A process sampling positions [2, 3] of a round draws what one process sampling all four draws there,
    whatever else is in its sampler batches."""
    whole = sample_prompts(sd15.unet, sd15, PROMPTS, [0, 1, 2, 3], 1, rollout_config(initial_noise=noise), seed=3)
    share = sample_prompts(sd15.unet, sd15, PROMPTS[2:], [2, 3], 1,
                           rollout_config(initial_noise=noise, sample_batch_size=2), seed=3)
    rows = whole.select([4, 5, 6, 7])
    assert share.seeds == rows.seeds and share.prompts == rows.prompts
    assert torch.equal(share.latents[:, 0], rows.latents[:, 0])  # the same x_T, exactly
    torch.testing.assert_close(share.latents, rows.latents, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(share.log_probs, rows.log_probs, rtol=1e-4, atol=1e-5)
    assert np.abs(share.images.astype(int) - rows.images.astype(int)).max() <= 1

    one_step = rollout_config(initial_noise=noise, steps=1)  # x_T is all these compare
    other_round = sample_prompts(sd15.unet, sd15, PROMPTS[2:], [2, 3], 2, one_step, seed=3)
    other_seed = sample_prompts(sd15.unet, sd15, PROMPTS[2:], [2, 3], 1, one_step, seed=4)
    other_position = sample_prompts(sd15.unet, sd15, PROMPTS[2:], [0, 1], 1, one_step, seed=3)
    for other in (other_round, other_seed, other_position):
        assert not torch.equal(other.latents[:, 0], share.latents[:, 0])


# -- reward phase ---------------------------------------------------------------------------------------------


def round_images(count: int) -> np.ndarray:
    """Distinct uint8 images (count, 32, 32, 3): image i is grey level 40 i."""
    return np.stack([np.full((32, 32, 3), 40 * i, np.uint8) for i in range(count)])


class RaisesOnWhite:
    """The shapes scorer, except that a batch holding an all-white image raises (as a real scorer might)."""

    name = "shapes"

    def __init__(self, scorer) -> None:
        self.scorer = scorer

    def score(self, images, prompts):
        if any(int(np.asarray(image).min()) == 255 for image in images):
            raise ValueError("cannot see an all-white image")
        return self.scorer.score(images, prompts)


def test_reward_judge_gives_p_by_i_rewards_and_nan_with_a_listed_failure_for_an_unscorable_image():
    prompts = PROMPTS[:3]
    trajectory = fake_trajectory(6)
    trajectory.prompts = [p for p in prompts for _ in range(2)]
    trajectory.images = round_images(6)
    trajectory.images[3] = 255
    judge = RewardJudge("shapes", torch.device("cpu"), batch_size=4)
    judge.rewards.scorers[0] = RaisesOnWhite(judge.rewards.scorers[0])

    rewards, parts = judge.judge(7, prompts, trajectory)
    assert list(parts) == ["shapes"] and torch.equal(parts["shapes"].nan_to_num(-1), rewards.nan_to_num(-1))
    assert rewards.shape == (3, 2) and rewards.dtype == torch.float32
    expected = build_scorer("shapes", device="cpu").score(trajectory.images, trajectory.prompts).view(3, 2)
    assert torch.isnan(rewards[1, 1])
    keep = ~torch.isnan(rewards)
    assert int(keep.sum()) == 5
    torch.testing.assert_close(rewards[keep], expected[keep])
    assert judge.failures == [f"round 7 image 3 ({prompts[1]!r}): shapes: cannot see an all-white image"]

    trajectory.images[3] = 0
    judge.judge(8, prompts, trajectory)
    assert len(judge.failures) == 1  # failures of every round accumulate; this one had none


def test_reward_judge_lists_a_prompt_its_scorer_cannot_read():
    trajectory = fake_trajectory(4)
    trajectory.prompts = ["a red circle on a black background"] * 2 + ["a purple pentagon"] * 2
    trajectory.images = round_images(4)
    judge = RewardJudge("shapes", torch.device("cpu"), batch_size=16)
    rewards, _ = judge.judge(0, ["a red circle on a black background", "a purple pentagon"], trajectory)
    assert not rewards[0].isnan().any() and rewards[1].isnan().all()
    assert [f.split(":")[0] for f in judge.failures] == ["round 0 image 2 ('a purple pentagon')",
                                                         "round 0 image 3 ('a purple pentagon')"]
    assert "cannot parse 'a purple pentagon'" in judge.failures[0]


# -- the win rate against the base ---------------------------------------------------------------------------


def test_win_rate_counts_wins_losses_and_ties_half():
    nan = float("nan")
    policy = torch.tensor([[0.75, 0.75], [0.125, 0.25], [0.5, 0.5], [0.75, nan], [0.25, 0.75]])
    base = torch.tensor([[0.25, 0.5], [0.5, 0.5], [0.25, 0.75], [0.5, 0.5], [0.5, 0.5]])
    # means: win, loss, tie, win (0.75: the unscored image left out, not counted 0), tie
    assert win_rate(policy, base) == pytest.approx((1 + 0 + 0.5 + 1 + 0.5) / 5)
    assert win_rate(base, policy) == pytest.approx((0 + 1 + 0.5 + 0 + 0.5) / 5)
    assert win_rate(policy[:1], base[:1]) == 1.0 and win_rate(policy[1:2], base[1:2]) == 0.0
    assert win_rate(policy.double(), base) == pytest.approx(0.6)


def test_win_rate_leaves_out_prompts_without_a_score_on_either_side():
    nan = float("nan")
    policy = torch.tensor([[0.9, 0.9], [nan, nan], [0.1, 0.1], [0.5, 0.5]])
    base = torch.tensor([[0.1, 0.1], [0.5, 0.5], [nan, nan], [0.9, 0.9]])
    # prompt 1: no policy score; prompt 2: no base score: neither a win nor a loss
    assert win_rate(policy, base) == pytest.approx(0.5)
    assert np.isnan(win_rate(policy[1:3], base[1:3]))  # nothing to compare


class StandInPolicy:
    """Records the adapter switches of a peft model."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.adapters_on = True

    def disable_adapters(self) -> None:
        self.calls.append("disable")
        self.adapters_on = False

    def enable_adapters(self) -> None:
        self.calls.append("enable")
        self.adapters_on = True


def test_base_win_rate_samples_with_the_adapters_off_and_switches_them_back_on():
    policy = StandInPolicy()
    base_images = fake_trajectory(4)
    seen: list[bool] = []

    def sample() -> Trajectory:
        seen.append(policy.adapters_on)
        return base_images

    def score(trajectory: Trajectory) -> torch.Tensor:
        assert trajectory is base_images and policy.adapters_on
        return torch.tensor([0.5, 0.5, 0.9, 0.9])

    rate = base_win_rate(policy, sample, score, torch.tensor([[0.6, 0.6], [0.1, 0.2]]))
    assert seen == [False] and policy.calls == ["disable", "enable"] and policy.adapters_on
    assert rate == pytest.approx(0.5)


def test_base_win_rate_switches_the_adapters_back_on_when_sampling_fails():
    policy = StandInPolicy()

    def sample() -> Trajectory:
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        base_win_rate(policy, sample, lambda t: torch.zeros(2), torch.zeros(1, 2))
    assert policy.calls == ["disable", "enable"] and policy.adapters_on


# -- the per-round log ----------------------------------------------------------------------------------------


def entry(round_: int, **extra) -> dict:
    return {"round": round_, "reward_mean": 0.1 * round_, "reward_std": 0.05, "win_rate_vs_base": None, **extra}


def rounds_in(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_write_round_keeps_earlier_rounds_and_drops_its_own_and_later_ones(tmp_path):
    log = tmp_path / "out" / "rounds.jsonl"
    for r in range(4):
        write_round(log, entry(r))
    assert [e["round"] for e in rounds_in(log)] == [0, 1, 2, 3]
    write_round(log, entry(2, resumed=True))  # a run resumed from inside round 2 redoes rounds 2 and on
    assert rounds_in(log) == [entry(0), entry(1), entry(2, resumed=True)]
    write_round(log, entry(3))
    assert [e["round"] for e in rounds_in(log)] == [0, 1, 2, 3]
    write_round(log, entry(0, again=True))
    assert rounds_in(log) == [entry(0, again=True)]


def test_write_round_leaves_the_old_log_whole_when_the_write_is_cut_short(tmp_path, monkeypatch):
    log = tmp_path / "rounds.jsonl"
    write_round(log, entry(0))
    write_round(log, entry(1))
    before = log.read_bytes()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process stopped before the new log was in place

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_round(log, entry(1, redone=True))
    assert log.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["rounds.jsonl"]


def test_plot_rounds_draws_the_log_beside_it_and_needs_one(tmp_path):
    log = tmp_path / round_log.ROUNDS_LOG
    assert plot_rounds(log) is None and not (tmp_path / "rounds.png").exists()
    write_round(log, entry(0, win_rate_vs_base=0.5))
    write_round(log, entry(1, win_rate_vs_base=0.75))
    write_round(log, entry(2, reward_mean=float("nan"), win_rate_vs_base=float("nan")))  # a round nothing scored
    out = plot_rounds(log)
    assert out == tmp_path / "rounds.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    without_base = tmp_path / "plain" / round_log.ROUNDS_LOG
    write_round(without_base, entry(0))
    assert plot_rounds(without_base).is_file()


@pytest.mark.parametrize("line, why", [
    ("{not json", r"not valid JSON \(Expecting property name enclosed in double quotes at column 2\)"),
    ('{"reward_mean": 0.5}', "not a round's line"),
    ("[1, 2]", "not a round's line"),
])
def test_a_broken_line_in_the_log_is_an_error_naming_the_file_and_line(tmp_path, line, why):
    log = tmp_path / "rounds.jsonl"
    write_round(log, entry(0))
    log.write_text(log.read_text() + line + "\n")
    before = log.read_bytes()
    for call in (lambda: write_round(log, entry(5)), lambda: plot_rounds(log)):
        with pytest.raises(ValueError, match=rf"^{log} line 2: {why}") as error:
            call()
        assert expected_failure(error.value) == str(error.value) and "\n" not in str(error.value)
    assert log.read_bytes() == before

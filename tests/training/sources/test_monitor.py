"""The reward-hacking monitor in online runs (`sources.monitor`): gold scores in rounds.jsonl beside the training
reward, best/ holding the weights of the best evaluation, the warning and `stop`, exact resumes, and its settings
refused before any model loads."""

from __future__ import annotations

import json
from contextlib import nullcontext

import pytest
import torch
from safetensors.torch import load_file

from diffalign.cli.errors import expected_failure
from diffalign.config.core import ConfigError, load_config
from diffalign.config.schema import RunConfig
from diffalign.rewards import build_scorer
from diffalign.sampling.generate import generate, load_pipeline
from diffalign.training.checkpoint import list_checkpoints
from diffalign.training.loop import train
from diffalign.training.methods.ddpo import DDPO
from diffalign.training.sources.gold_plot import draw_gold, same_scale
from diffalign.training.sources.monitor import RewardMonitor, held_out_note, monitor_prompts, padded_share
from diffalign.training.sources.round_log import plot_rounds
from diffalign.training.state import full_trainable_state

HELD_OUT = ["a red circle on a orange background", "a small red square on a orange background"]


def _cfg(model, out, *extra):
    # one micro-batch of 2 prompts x 2 images a round, one step of its trajectories trained: one optimizer step a round
    return load_config(RunConfig, None, [
        f"model.pretrained={model}", "objective.name=ddpo", "objective.timestep_fraction=0.5",
        "objective.per_prompt_stats=false", "objective.clip_range=0.2", "rollout.steps=2",
        "rollout.prompts_per_round=2", "rollout.images_per_prompt=2", "rollout.sample_batch_size=4",
        "rollout.compare_base=false", "train.batch_size=4", "train.max_steps=5", "train.checkpoint_every=0",
        "train.learning_rate=3e-2", "train.warmup_steps=0", "train.trackers=[]", "validation.every=0",
        f"train.output_dir={out}", "rollout.monitor.scorers={shapes: 1.0}", "rollout.monitor.max_prompts=2",
        "rollout.monitor.seeds=1", "rollout.monitor.steps=2", *extra])


def _lines(run):
    return [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]


def _logged(line):
    """What a round's line says of the monitor, timings left out (JSON, so that NaNs compare equal)."""
    final = {k: v for k, v in line.get("final_evaluation", {}).items() if k != "gold_s"}
    return json.dumps({"round": line["round"], "gold": line.get("gold"), "reward": line.get("monitor_reward"),
                       "final": final})


def _lora(run):
    return load_file(str(run / "pytorch_lora_weights.safetensors"))


def test_gold_scores_are_logged_beside_the_training_reward_and_best_holds_the_best_weights(tiny_models, tmp_path,
                                                                                           capsys):
    run, training = tmp_path / "run", tmp_path / "train.txt"
    training.write_text(f"{HELD_OUT[1]}\na blue square on a white background\n")  # one monitor prompt not held out
    result = train(_cfg(tiny_models["sd15"], run, "rollout.monitor.every=2", "train.max_steps=3",
                        f"rollout.prompts={training}"))
    assert ("warning: 1 of the 2 rollout.monitor.prompts prompts is also a training prompt (rollout.prompts)"
            in capsys.readouterr().out)
    lines = _lines(run)
    assert [line["round"] for line in lines] == [0, 1, 2]
    assert [line["round"] for line in lines if "gold" in line] == [0, 2]  # the weights that sample rounds 0 and 2
    for line in (lines[0], lines[2]):
        assert line["gold"] == line["gold/shapes"] and 0 <= line["gold"] <= 1 and line["gold_unscored"] == 0
    # the training reward an evaluation compares: the rounds sampled since the evaluation before, its own included
    rewards = [line["reward_mean"] for line in lines]
    assert [lines[0]["monitor_reward"], lines[2]["monitor_reward"]] == pytest.approx(
        [rewards[0], (rewards[1] + rewards[2]) / 2])
    final = lines[-1]["final_evaluation"]  # the final weights, after round 2's training
    assert final["round"] == 3 and final["step"] == 3 and final["monitor_reward"] != final["monitor_reward"]  # NaN

    golds = [(lines[0]["gold"], 0), (lines[2]["gold"], 2), (final["gold"], 3)]
    gold, round_ = max(golds, key=lambda g: (g[0], -g[1]))
    best = json.loads((run / "best" / "best.json").read_text())
    assert (best["gold"], best["round"], best["step"]) == (gold, round_, round_)  # one optimizer step a round
    assert best["parts"] == {"shapes": gold} and best["scorers"] == {"shapes": 1.0}
    assert sorted(p.name for p in (run / "best").iterdir()) == ["README.md", "best.json", "config.yaml",
                                                                "pytorch_lora_weights.safetensors"]
    # best/ loads as a finished run's weights do, and its images score the logged gold score again
    pipe = load_pipeline(str(tiny_models["sd15"]), loras=[(str(run / "best"), 1.0)], sampler="ddim")
    images = generate(pipe, HELD_OUT, [0, 0], steps=2, guidance=5.0)
    again = build_scorer("shapes").score(images, HELD_OUT).double().mean().item()
    assert again == pytest.approx(best["gold"], abs=1e-6)
    assert (result.output_dir / "rounds.png").is_file()


class _Injected:
    """A constructed hacking run: the training reward the monitor sees rises with the round (0.1 x round) and the
    gold score of the evaluation of round r is GOLD[r]; every evaluated policy's LoRA weights are kept by round."""

    def __init__(self, monkeypatch, gold: dict[int, float]):
        self.gold, self.weights = gold, {}
        real_sampled, real_evaluate = RewardMonitor.round_sampled, RewardMonitor.evaluate
        injected = self

        def round_sampled(monitor, round_, reward, step, policy, autocast):
            return real_sampled(monitor, round_, 0.1 * round_, step, policy, autocast)

        def evaluate(monitor, round_, step, policy, autocast, final):
            monitor.injected_round = round_
            state, _ = full_trainable_state(policy)
            injected.weights[round_] = {k: v.clone() for k, v in state.items() if "lora" in k}
            return real_evaluate(monitor, round_, step, policy, autocast, final)

        def gold_scores(monitor, policy, autocast):
            value = injected.gold[monitor.injected_round]
            return value, {"shapes": value}, 0

        monkeypatch.setattr(RewardMonitor, "round_sampled", round_sampled)
        monkeypatch.setattr(RewardMonitor, "evaluate", evaluate)
        monkeypatch.setattr(RewardMonitor, "gold_scores", gold_scores)


def _same_lora(saved: dict, kept: dict) -> bool:
    """Whether a saved adapter holds the kept policy weights (the file names them in diffusers' format)."""
    values = sorted((tuple(v.shape), v.flatten().tolist()) for v in saved.values())
    expected = sorted((tuple(v.shape), v.flatten().tolist()) for v in kept.values())
    return len(saved) == len(kept) and values == expected


def test_stop_ends_the_run_at_the_warning_with_the_warned_weights_saved(tiny_models, tmp_path, monkeypatch, capsys):
    injected = _Injected(monkeypatch, {0: 0.70, 1: 0.65, 2: 0.60})
    run = tmp_path / "run"
    result = train(_cfg(tiny_models["sd15"], run, "rollout.monitor.every=1", "rollout.monitor.patience=2",
                        "rollout.monitor.stop=true", "rollout.monitor.keep_best=false", "train.max_steps=8"))
    lines = _lines(run)
    assert [line["round"] for line in lines] == [0, 1, 2]  # round 2 sampled and judged, never trained
    assert lines[2]["monitor_warning"] == (
        "reward hacking? over the last 2 evaluations (rounds 0-2) the training reward rose 0 -> 0.2 while the gold "
        "score fell 0.7 -> 0.6; the best gold score (0.7, round 0, step 0) was not kept "
        "(rollout.monitor.keep_best=false); stopping the run with the weights of round 2 (rollout.monitor.stop=true)")
    assert "final_evaluation" not in lines[2] and not (run / "best").exists()
    assert result.weights == run / "pytorch_lora_weights.safetensors"
    assert _same_lora(_lora(run), injected.weights[2]) and not _same_lora(_lora(run), injected.weights[1])
    assert capsys.readouterr().out.count("reward hacking?") == 1


def test_a_resumed_run_warns_and_keeps_best_as_the_uninterrupted_run(tiny_models, tmp_path, monkeypatch):
    # two optimizer steps a round; evaluations at rounds 0 and 2 and of the final weights (round 3): the one of round
    # 2 compares the training reward of rounds 1 and 2 (0.15) with round 0's, so a resume must keep round 1's reward,
    # the evaluation of round 0 (the streak starts there) and its best (or best/ would take round 2's weights)
    injected = _Injected(monkeypatch, {0: 0.70, 2: 0.60, 3: 0.65})
    extra = ("rollout.monitor.every=2", "rollout.monitor.patience=1", "train.max_steps=6", "train.checkpoint_every=1",
             "train.keep_checkpoints=1", "train.batch_size=2")
    model = tiny_models["sd15"]
    train(_cfg(model, tmp_path / "whole", *extra))
    whole_weights = dict(injected.weights)
    whole = _lines(tmp_path / "whole")
    assert whole[2]["monitor_warning"] == (
        f"reward hacking? over the last 1 evaluation (rounds 0-2) the training reward rose 0 -> 0.15 while the gold "
        f"score fell 0.7 -> 0.6; the best gold score (0.7, round 0, step 0) is kept in {tmp_path / 'whole'}/best/; "
        f"rollout.monitor.stop=true would stop the run at such a warning")
    real = DDPO.__call__
    for crash_at, where in [(3, "inside round 1"), (4, "at the boundary of rounds 1 and 2")]:
        calls, run = {"n": 0}, tmp_path / f"broken-{crash_at}"

        def crash(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == crash_at + 1:  # the first micro-step after the checkpoint of step `crash_at`
                raise RuntimeError("killed")
            return real(self, *args, **kwargs)

        monkeypatch.setattr(DDPO, "__call__", crash)
        with pytest.raises(RuntimeError, match="killed"):
            train(_cfg(model, run, *extra))
        monkeypatch.setattr(DDPO, "__call__", real)
        (checkpoint,) = list_checkpoints(run)
        assert checkpoint.name == f"step-{crash_at:08d}" and (checkpoint / "monitor-0.json").is_file(), where
        assert (checkpoint / "rollouts-0.json").is_file() == (crash_at == 3), where
        train(_cfg(model, run, *extra, "train.resume=latest"))
        resumed = _lines(run)
        assert [_logged(line) for line in resumed] == [_logged(line) for line in whole], where
        assert resumed[2]["monitor_warning"] == whole[2]["monitor_warning"].replace("whole", run.name), where
        best = [json.loads((folder / "best" / "best.json").read_text()) for folder in (tmp_path / "whole", run)]
        assert best[0] == best[1] and best[0]["round"] == 0 and best[0]["gold"] == 0.70, where
        assert _same_lora(_lora(run / "best"), whole_weights[0]), where
        assert not _same_lora(_lora(run / "best"), whole_weights[2]), where


def test_settings_the_monitor_cannot_run_with_are_refused_before_loading(tiny_models, tmp_path):
    model = tiny_models["sd15"]
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    cases = [
        (f"rollout.monitor.prompts={tmp_path / 'missing.txt'}",
         f"rollout.monitor.prompts '{tmp_path / 'missing.txt'}': no such file"),
        (f"rollout.monitor.prompts={empty}", f"rollout.monitor.prompts '{empty}': no prompts found"),
        ("rollout.monitor.scorers={shapes: heavy}",
         "rollout.monitor.scorers.shapes: 'heavy' is neither a weight (a number) nor a mapping {weight: W, OPTION: "
         "VALUE, ...}"),
        ("rollout.monitor.scorers={shapes: {dtype: fp32}}", "rollout.monitor.scorers.shapes: {'dtype': 'fp32'} has no "
         "weight"),
        ("rollout.monitor.scorers={shapez: 1.0}", "rollout.monitor.scorers.shapez: unknown scorer 'shapez'; did you "
         "mean 'shapes'?"),
    ]
    for n, (setting, message) in enumerate(cases):
        with pytest.raises((ValueError, KeyError, FileNotFoundError)) as caught:
            train(_cfg(model, tmp_path / f"run{n}", setting))
        assert expected_failure(caught.value).startswith(message), setting
        assert not (tmp_path / f"run{n}").exists(), setting  # refused before the run folder and the models
    with pytest.raises(ConfigError, match=r"invalid value for 'rollout.monitor.every': expected a value >= 1, got 0"):
        _cfg(model, tmp_path / "x", "rollout.monitor.every=0")
    for n, setting in enumerate(["rollout.monitor.scorers={shapes: 1.0}", "rollout.rewards={shapes: 1.0}"]):
        key = setting.split("=")[0]
        with pytest.raises(ValueError, match=rf"{key} is read by the methods that sample and judge their own images "
                                             r"each round \(online rollouts\); objective dpo does not"):
            train(load_config(RunConfig, None, [f"model.pretrained={model}", "objective.name=dpo", setting,
                                                f"train.output_dir={tmp_path / f'offline{n}'}"]))
        assert not (tmp_path / f"offline{n}").exists()


def test_monitor_prompts_that_are_training_prompts_are_named_in_a_warning(tmp_path):
    cfg = load_config(RunConfig, None, ["rollout.monitor.max_prompts=3"])
    prompts = monitor_prompts(cfg)
    assert prompts == ["a red circle on a orange background", "a small red square on a orange background",
                       "a small red triangle on a orange background"]  # the file's '#' comment line is no prompt
    assert held_out_note(prompts, ["a blue square"]) is None
    assert held_out_note(prompts, prompts + ["x"]) == (
        "warning: all 3 rollout.monitor.prompts prompts are also training prompts (rollout.prompts): the gold score "
        "does not measure held-out prompts alone; give the monitor prompts the run does not train on")
    assert held_out_note(prompts, prompts[:1]).startswith(
        "warning: 1 of the 3 rollout.monitor.prompts prompts is also a training prompt (rollout.prompts)")
    assert held_out_note(prompts[:1], prompts[:1]).startswith(
        "warning: the one rollout.monitor.prompts prompt is also a training prompt")
    assert held_out_note(prompts, prompts[:2]).startswith("warning: 2 of the 3 rollout.monitor.prompts prompts are")


def test_each_process_draws_an_equal_share_of_the_held_out_images():
    shares = [padded_share(5, rank, 2) for rank in range(2)]
    assert shares == [[0, 1, 2], [3, 4, 4]]  # gathered: 0..4 in order, then the repeat that is cut off
    assert [i for share in shares for i in share][:5] == list(range(5))
    assert padded_share(4, 0, 1) == [0, 1, 2, 3]


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_rounds_png_draws_the_gold_score_its_best_and_the_warnings(tmp_path, scale):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [{"round": r, "reward_mean": 0.1 * r, "reward_std": 0.01} for r in range(4)]
    entries[0].update(gold=0.5 * scale, monitor_reward=0.0)
    entries[2].update(gold=0.7 * scale, monitor_reward=0.15, monitor_warning="reward hacking? ...")
    entries[3]["final_evaluation"] = {"round": 4, "gold": 0.6 * scale, "monitor_reward": 0.3}
    fig, axis = plt.subplots()
    axis.plot([e["round"] for e in entries], [e["reward_mean"] for e in entries], label="mean reward")
    draw_gold(axis, entries)
    gold_axis = fig.axes[-1]
    assert len(fig.axes) == (1 if scale == 1.0 else 2)  # a second y-axis only when the scales differ
    gold_line = next(line for line in gold_axis.lines if line.get_label().startswith("gold score"))
    assert list(gold_line.get_xdata()) == [0, 2, 4] and list(gold_line.get_ydata()) == pytest.approx(
        [0.5 * scale, 0.7 * scale, 0.6 * scale])
    compared = next(line for line in axis.lines if line.get_label().startswith("training reward since"))
    assert list(compared.get_xdata()) == [0, 2, 4] and list(compared.get_ydata()) == [0.0, 0.15, 0.3]
    labels = [text.get_text() for text in axis.get_legend().get_texts()]
    assert labels == ["mean reward", "training reward since the evaluation before", "gold score (held-out prompts)",
                      f"best gold {0.7 * scale:.4g} (round 2)", "reward-hacking warning"]
    plt.close(fig)
    log = tmp_path / "rounds.jsonl"
    log.write_text("".join(json.dumps(e) + "\n" for e in entries))
    assert plot_rounds(log).stat().st_size > 0


def test_two_processes_drawing_a_share_each_score_the_gold_of_one(tiny_models, tmp_path):
    from diffalign.config.schema import ModelConfig
    from diffalign.models.loading import load_parts

    cfg = _cfg(tiny_models["sd15"], tmp_path / "run", "rollout.monitor.max_prompts=3")  # 3 images: shares 2 + 2
    parts = load_parts(ModelConfig(pretrained=str(tiny_models["sd15"])))
    device = torch.device("cpu")
    one = RewardMonitor(cfg, parts, device, 0, 1, None, tmp_path, []).gold_scores(parts.unet)
    tables = {}

    def gather_of(rank):
        def gather(table):
            tables[rank] = table
            return torch.cat([tables[0], tables[1]]) if len(tables) == 2 else table
        return gather

    RewardMonitor(cfg, parts, device, 1, 2, gather_of(1), tmp_path, []).gold_scores(parts.unet)
    two = RewardMonitor(cfg, parts, device, 0, 2, gather_of(0), tmp_path, []).gold_scores(parts.unet)
    assert [len(t) for t in tables.values()] == [2, 2]  # the last image drawn twice, cut off after the gather
    assert two[0] == pytest.approx(one[0], abs=1e-6) and two[1] == pytest.approx(one[1], abs=1e-6)
    assert two[2] == one[2] == 0


def test_gold_and_reward_share_an_axis_only_on_one_scale():
    assert same_scale([0.2, 0.3, 0.4], [0.5, 0.35]) and same_scale([0.0, 0.3], [0.5, 0.7])  # both in [0, 1]
    assert same_scale([0.0, 0.3], [0.5]) and not same_scale([0.2, 0.25], [21.0])  # one evaluation so far
    assert not same_scale([0.2, 0.25], [20.0, 22.0])  # HPS against PickScore
    assert not same_scale([0.0, 0.001], [0.0, 1.0])  # overlapping, but one would be a flat line
    assert same_scale([float("nan")], [1.0]) and same_scale([], [1.0])



def test_held_out_images_the_gold_scorer_cannot_score_are_left_out_and_named(tiny_models, lora_parts, tmp_path,
                                                                              capsys):
    from diffalign.rewards import register_scorer

    @register_scorer("test-monitor-blind")
    class Blind:
        """Scores only the prompts naming a square; NaN (unscorable) for the others."""

        name, scale, logit_scale = "test-monitor-blind", "test", 1.0

        def __init__(self, device=None):
            del device

        def score(self, images, prompts):
            return torch.tensor([0.25 if "square" in p else float("nan") for p in prompts])

    cfg = load_config(RunConfig, None, [f"model.pretrained={tiny_models['sd15']}", "rollout.monitor.max_prompts=2",
                                        "rollout.monitor.seeds=1", "rollout.monitor.steps=2",
                                        "rollout.monitor.scorers={test-monitor-blind: 2.0}"])
    parts = lora_parts(tiny_models["sd15"])
    monitor = RewardMonitor(cfg, parts, torch.device("cpu"), 0, 1, None, tmp_path, [])
    monitor.pending = [0.1]
    fields = monitor.evaluate(0, 0, parts.unet, nullcontext, final=False)
    assert (fields["gold"], fields["gold/test-monitor-blind"], fields["gold_unscored"]) == (0.5, 0.25, 1)
    assert ("reward-hacking monitor, round 0: 1 of 2 held-out images could not be scored, e.g. image 0 ('a red circle "
            "on a orange background'): test-monitor-blind: non-finite score (nan); the gold score leaves "
            "them out") in capsys.readouterr().out
    monitor.pending = [0.2]
    monitor.gold_scores = lambda policy, autocast: (float("nan"), {"test-monitor-blind": float("nan")}, 2)
    fields = monitor.evaluate(1, 1, parts.unet, nullcontext, final=False)
    assert fields["gold"] != fields["gold"] and fields["gold_unscored"] == 2  # NaN: neither best nor evidence
    assert json.loads((tmp_path / "best" / "best.json").read_text())["round"] == 0


def test_best_of_a_full_fine_tuning_run_is_a_unet_folder_as_its_final_save(tiny_models, tmp_path, monkeypatch):
    from diffusers import UNet2DConditionModel

    from diffalign.config.schema import ModelConfig
    from diffalign.models.loading import load_parts
    from diffalign.training.sources.hacking import Evaluation

    cfg = load_config(RunConfig, None, [f"model.pretrained={tiny_models['sd15']}", "lora.enabled=false",
                                        "rollout.monitor.scorers={shapes: 1.0}"])
    parts = load_parts(ModelConfig(pretrained=str(tiny_models["sd15"])))
    parts.unet.requires_grad_(True)
    monitor = RewardMonitor(cfg, parts, torch.device("cpu"), 0, 1, None, tmp_path, [])
    best = monitor.keep_best(Evaluation(5, 7, 0.4, 0.6, {"shapes": 0.6}), parts.unet)
    assert best == tmp_path / "best" and sorted(p.name for p in best.iterdir()) == ["README.md", "best.json",
                                                                                    "config.yaml", "unet"]
    card = (best / "README.md").read_text()  # best/'s own model card: what these weights are, and where
    assert "gold score 0.6 at round 5, step 7" in card and "- steps: 7 of" in card and "full-fine-tune" in card
    assert f"UNet2DConditionModel.from_pretrained({str(best / 'unet')!r}" in card and ".saving-" not in card
    loaded = UNet2DConditionModel.from_pretrained(best / "unet")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), parts.unet.state_dict().values()))
    assert json.loads((best / "best.json").read_text())["step"] == 7
    assert not list(tmp_path.glob(".saving-*"))  # written into a temporary folder, then moved into place

    def crash(folder, *args):  # a crash halfway through the next best/
        (folder / "unet").mkdir()
        raise OSError("killed while writing")

    monkeypatch.setattr("diffalign.training.sources.monitor.write_weights", crash)
    with pytest.raises(OSError, match="killed while writing"):
        monitor.keep_best(Evaluation(10, 12, 0.5, 0.7, {"shapes": 0.7}), parts.unet)
    assert json.loads((best / "best.json").read_text())["step"] == 7 and (best / "unet" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # the whole old best/, nothing half written


def test_train_overwrite_deletes_the_previous_runs_best_weights(tmp_path):
    from diffalign.training.run_folder import OUTPUTS, _clear

    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "best.json").write_text("{}")
    assert "best" in OUTPUTS and "best" in _clear(tmp_path) and not (tmp_path / "best").exists()

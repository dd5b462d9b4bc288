"""The online rollout source: rounds of policy samples judged by a reward, and an exact resume (weights and
prompt order) after a crash inside a round and at a round boundary."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler
from safetensors.torch import load_file

from diffalign.config.core import cfg_field, load_config
from diffalign.config.objectives import ObjectiveConfig, objective, unregister_objective
from diffalign.config.schema import RunConfig
from diffalign.objectives import ObjectiveOutput
from diffalign.sampling.trajectory import step_log_prob
from diffalign.training.checkpoint import list_checkpoints
from diffalign.training.loop import train
from diffalign.training.methods.base import Method
from diffalign.training.sources.online import OnlineRollouts, Rollouts, prompt_order

PROMPTS = ["a red circle on a black background", "a small blue square on a white background",
           "a large green triangle on a black background", "a white square on a red background",
           "a yellow circle on a blue background"]


class Crash(RuntimeError):
    """Stands for the process being killed."""


@dataclass
class ProbeOnlineConfig(ObjectiveConfig):
    name: str = cfg_field("probe-online", "A test method on online rollouts.")


class ProbeOnline(Method):
    """Reward-weighted log-probability of one random stored step per prompt (a REINFORCE probe, test only)."""

    source = OnlineRollouts
    reference = "none"
    seen: list[list[str]] = []
    crash_at: int | None = None

    def __call__(self, model, batch: Rollouts, rand) -> ObjectiveOutput:
        if ProbeOnline.crash_at is not None and len(ProbeOnline.seen) == ProbeOnline.crash_at:
            raise Crash
        ProbeOnline.seen.append(list(batch.prompts))
        per = batch.images_per_prompt
        steps = rand.randint(batch.trajectories.num_steps).repeat_interleave(per)
        scheduler = DDIMScheduler.from_config(model.noise_scheduler.config)
        log_prob = step_log_prob(model.unet, scheduler, batch.trajectories, steps)
        advantage = torch.nan_to_num(batch.rewards - batch.rewards.mean(dim=1, keepdim=True)).flatten()
        return ObjectiveOutput(-(advantage * log_prob).mean(), {"reward": batch.rewards.nanmean()})


@pytest.fixture
def probe():
    objective("probe-online", method=ProbeOnline)(ProbeOnlineConfig)
    ProbeOnline.seen, ProbeOnline.crash_at = [], None
    yield ProbeOnline
    unregister_objective("probe-online")


def _cfg(model: Path, tmp_path: Path, out: str, *extra: str) -> RunConfig:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return load_config(RunConfig, None, [
        f"model.pretrained={model}", "objective.name=probe-online", f"rollout.prompts={prompts}",
        "rollout.prompts_per_round=4", "rollout.images_per_prompt=2", "rollout.steps=3", "rollout.sample_batch_size=4",
        "train.batch_size=2", "train.max_steps=5", "train.checkpoint_every=1", "train.keep_checkpoints=1",
        "train.learning_rate=3e-2", "train.warmup_steps=0", "train.log_every=1", "train.trackers=[]",
        "validation.every=0", f"train.output_dir={tmp_path / out}", *extra,
    ])


def test_prompt_order_is_a_seeded_permutation_per_pass():
    rounds = [prompt_order(5, 0, r, 2) for r in range(5)]
    flat = [i for r in rounds for i in r]
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))
    assert flat[:5] != flat[5:10]  # another permutation in the second pass
    assert rounds == [prompt_order(5, 0, r, 2) for r in range(5)]


@pytest.mark.parametrize("crash_at", [3, 4], ids=["inside-a-round", "at-a-round-boundary"])
def test_crashed_online_run_resumes_to_identical_weights_and_prompt_order(tiny_models, tmp_path, probe, crash_at):
    model = tiny_models["sd15"]
    whole = train(_cfg(model, tmp_path, "whole"))
    seen_whole = list(probe.seen)
    assert len(seen_whole) == 5 and whole.metrics["loss"] == whole.metrics["loss"]  # finite

    probe.seen, probe.crash_at = [], crash_at
    with pytest.raises(Crash):
        train(_cfg(model, tmp_path, "broken"))
    (checkpoint,) = list_checkpoints(tmp_path / "broken")
    assert checkpoint.name == f"step-{crash_at:08d}"
    assert (checkpoint / "rollouts-0.json").is_file() == (crash_at == 3)  # at a round boundary: resampled
    probe.seen, probe.crash_at = [], None
    resumed = train(_cfg(model, tmp_path, "broken", "train.resume=latest"))
    assert probe.seen == seen_whole[crash_at:]

    a, b = load_file(str(whole.weights)), load_file(str(resumed.weights))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    base = load_file(str(list_checkpoints(tmp_path / "whole")[-1] / "pytorch_lora_weights.safetensors"))
    assert any(not torch.equal(a[k], base[k]) for k in a)  # the last steps trained something

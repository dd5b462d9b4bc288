"""DDPO and GRPO: on-policy ratios of exactly 1, the advantage phases, the KL switch, steps on every model family,
and exact resumes inside a round and between inner epochs (with the per-prompt statistics restored)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from diffalign.config.core import load_config
from diffalign.config.objectives import DDPOConfig, GRPOConfig
from diffalign.config.schema import LoraConfig, ModelConfig, RunConfig
from diffalign.models.loading import load_parts
from diffalign.models.lora import attach_lora
from diffalign.models.reference import AdapterDisabledReference
from diffalign.sampling.trajectory import sample_trajectory
from diffalign.training.checkpoint import list_checkpoints
from diffalign.training.loop import train
from diffalign.training.methods.base import TrainableModel
from diffalign.training.methods.ddpo import DDPO
from diffalign.training.methods.grpo import GRPO
from diffalign.training.sources.online import Rollouts

NAN = float("nan")


def _round(tiny_models, shift: float = 0.0):
    """A round of 2 prompts x 2 images sampled by a LoRA policy (B moved by `shift`), in eval mode as the source
    samples, and the model view a method trains."""
    parts = load_parts(ModelConfig(pretrained=str(tiny_models["sd15"])))
    attach_lora(parts.unet, LoraConfig(rank=4, alpha=4))
    with torch.no_grad():
        for name, p in parts.unet.named_parameters():
            if "lora_B" in name:
                p.add_(shift)
    parts.unet.eval()
    prompts = ["a red circle", "a red circle", "a blue square", "a blue square"]
    trajectory = sample_trajectory(parts, parts.unet, prompts, [1, 2, 3, 4], steps=4, eta=1.0, guidance=5.0)
    rollouts = Rollouts(0, ["a red circle", "a blue square"], trajectory, torch.tensor([[0.1, 0.7], [0.6, 0.2]]))
    model = TrainableModel(parts.unet, AdapterDisabledReference(parts.unet), parts.noise_scheduler, "epsilon")
    return rollouts, model


@pytest.mark.parametrize("method_class", [DDPO, GRPO])
def test_on_the_first_pass_the_ratio_is_exactly_one_and_the_loss_the_plain_policy_gradient(tiny_models, method_class):
    rollouts, model = _round(tiny_models, shift=0.02)
    method = method_class(GRPOConfig() if method_class is GRPO else DDPOConfig(per_prompt_stats=False))
    rollouts.advantages = method.advantages(rollouts)
    batch = rollouts.take([0, 1, 2, 3], "image")
    for substep in range(2):
        batch.substep = substep
        out = method(model, batch, rand=None)
        assert out.metrics["ratio"].item() == 1.0 and out.metrics["clip_fraction"].item() == 0.0
        assert out.metrics["approx_kl"].item() == 0.0
        advantages = batch.advantages.flatten().clamp(-method.cfg.advantage_clip, method.cfg.advantage_clip)
        assert out.loss.item() == pytest.approx(-advantages.mean().item(), abs=1e-7)
        out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.unet.parameters() if p.requires_grad)


def test_grpo_advantages_are_normalised_within_each_prompts_group(tiny_models):
    rollouts, _ = _round(tiny_models)
    advantages = GRPO(GRPOConfig()).advantages(rollouts)
    # each group of two: (r - mean) / (population std + 1e-4), std = |a - b| / 2
    assert advantages[0].tolist() == pytest.approx([-0.3 / (0.3 + 1e-4), 0.3 / (0.3 + 1e-4)], rel=1e-5)
    assert advantages[1].tolist() == pytest.approx([0.2 / (0.2 + 1e-4), -0.2 / (0.2 + 1e-4)], rel=1e-5)
    glob = GRPO(GRPOConfig(std="global")).advantages(rollouts)
    # global population std of [0.1, 0.7, 0.6, 0.2] about 0.4: sqrt((0.09+0.09+0.04+0.04)/4) = sqrt(0.065)
    assert glob[0, 1].item() == pytest.approx(0.3 / (0.065**0.5 + 1e-4), rel=1e-5)


def test_ddpo_keeps_per_prompt_statistics_across_rounds_in_its_state(tiny_models):
    rollouts, _ = _round(tiny_models)
    method = DDPO(DDPOConfig(buffer_size=4, min_count=2))
    first = method.advantages(rollouts)  # each prompt has 2 rewards buffered: its own statistics from now on
    state = json.loads(json.dumps(method.state_dict()))
    assert state["tracker"]["buffers"] == {"a red circle": pytest.approx([0.1, 0.7]),
                                          "a blue square": pytest.approx([0.6, 0.2])}
    assert first[0].tolist() == pytest.approx([-1.0, 1.0], abs=1e-4)
    restored = DDPO(DDPOConfig(buffer_size=4, min_count=2))
    restored.load_state_dict(state)
    assert torch.equal(restored.advantages(rollouts), method.advantages(rollouts))


def test_the_kl_switch_scores_the_base_model_and_is_zero_while_the_policy_is_the_base(tiny_models):
    rollouts, model = _round(tiny_models)
    method = DDPO(DDPOConfig(per_prompt_stats=False, kl_weight=0.5))
    assert method.reference == "base" and DDPO(DDPOConfig()).reference == "none"
    rollouts.advantages = method.advantages(rollouts)
    out = method(model, rollouts.take([0, 1, 2, 3], "image"), rand=None)
    assert out.metrics["kl"].item() == 0.0  # LoRA B starts at zero: the policy is the base model
    rollouts, model = _round(tiny_models, shift=0.05)
    rollouts.advantages = method.advantages(rollouts)
    out = method(model, rollouts.take([0, 1, 2, 3], "image"), rand=None)
    assert out.metrics["kl"].item() > 0
    assert out.loss.item() == pytest.approx(out.metrics["policy_loss"].item() + 0.5 * out.metrics["kl"].item(),
                                            rel=1e-5)


def _cfg(model, out, name="ddpo", *extra):
    return load_config(RunConfig, None, [
        f"model.pretrained={model}", f"objective.name={name}", "objective.timestep_fraction=0.5", "rollout.steps=4",
        "rollout.prompts_per_round=2", "rollout.images_per_prompt=2", "rollout.sample_batch_size=4",
        "rollout.compare_base=false", "train.batch_size=2", "train.max_steps=4", "train.checkpoint_every=1",
        "train.keep_checkpoints=1", "train.learning_rate=3e-2", "train.warmup_steps=0", "train.trackers=[]",
        "validation.every=0", "objective.clip_range=0.2", f"train.output_dir={out}", *extra])


@pytest.mark.parametrize("family,name", [("sd15", "ddpo"), ("sd21-v", "ddpo"), ("sdxl", "ddpo"), ("sdxl", "grpo")])
def test_training_steps_on_every_model_family(tiny_models, tmp_path, family, name):
    # one micro-batch of 4 images a round, 2 substeps: one optimizer step a round
    result = train(_cfg(tiny_models[family], tmp_path / "run", name, "train.max_steps=2", "train.batch_size=4"))
    weights = load_file(str(result.weights))
    assert any(v.abs().max() > 0 for k, v in weights.items() if "lora_B" in k)
    rounds = [json.loads(line) for line in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1]
    for key in ("reward_mean", "reward_std", "advantage_std", "ratio", "clip_fraction", "approx_kl", "sample_s",
                "reward_s", "train_s"):
        assert all(r[key] == r[key] for r in rounds), key  # present and not NaN


# 2 prompts x 2 images = 4 images a round, 2 a micro-batch, 2 substeps, 2 passes: 8 micro-steps = 4 optimizer
# steps a round; per-prompt statistics reach min_count 2 in round 0, and with only two training prompts round 1
# draws the same two, so its advantages read the buffers a resume must restore
KILLED_RUN = ("train.max_steps=8", "rollout.inner_epochs=2", "rollout.shuffle=true", "objective.min_count=2",
              "objective.buffer_size=4")


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory) -> tuple[str, ...]:
    """The KILLED_RUN overrides with a training prompt file of two prompts."""
    prompts = tmp_path_factory.mktemp("ddpo-prompts") / "prompts.txt"
    prompts.write_text("a red circle on a blue background\na small green square on a white background\n")
    return (*KILLED_RUN, f"rollout.prompts={prompts}")


@pytest.fixture(scope="module")
def uninterrupted(tiny_models, tmp_path_factory, killed_run):
    """uninterrupted(): the result of the KILLED_RUN never stopped, trained at the first call (inside a test, under
    its thread settings) and shared by the crash cases, which only read it."""
    done: list = []

    def run():
        if not done:
            out = tmp_path_factory.mktemp("ddpo-whole") / "whole"
            done.append(train(_cfg(tiny_models["sd15"], out, "ddpo", *killed_run)))
        return done[0]

    return run


@pytest.mark.parametrize("crash_at,where", [(7, "inside the second pass of round 1"), (4, "at a round boundary")])
def test_a_killed_run_resumes_to_the_same_weights_and_statistics(tiny_models, tmp_path, monkeypatch, crash_at, where,
                                                                 uninterrupted, killed_run):
    extra = killed_run
    model = tiny_models["sd15"]
    whole = uninterrupted()
    calls, real = {"n": 0}, DDPO.__call__

    def crash(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2 * crash_at + 1:  # the first micro-step after the step-`crash_at` checkpoint
            raise RuntimeError("killed")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DDPO, "__call__", crash)
    with pytest.raises(RuntimeError, match="killed"):
        train(_cfg(model, tmp_path / "broken", "ddpo", *extra))
    monkeypatch.setattr(DDPO, "__call__", real)
    (checkpoint,) = list_checkpoints(tmp_path / "broken")
    assert checkpoint.name == f"step-{crash_at:08d}", where
    assert (checkpoint / "method-0.json").is_file()
    assert (checkpoint / "rollouts-0.json").is_file() == (crash_at % 4 != 0), where
    resumed = train(_cfg(model, tmp_path / "broken", "ddpo", *extra, "train.resume=latest"))
    a, b = load_file(str(whole.weights)), load_file(str(resumed.weights))
    assert all(torch.equal(a[k], b[k]) for k in a), where
    assert any(v.abs().max() > 0 for k, v in a.items() if "lora_B" in k)
    log = [json.loads(line)["reward_mean"] for line in (whole.output_dir / "rounds.jsonl").read_text().splitlines()]
    again = [json.loads(line)["reward_mean"] for line in (tmp_path / "broken" / "rounds.jsonl").read_text().splitlines()]
    assert again == log


def test_settings_the_methods_cannot_train_with_are_refused_before_loading(tiny_models, tmp_path):
    with pytest.raises(ValueError, match=r"set rollout.eta > 0"):
        train(_cfg(tiny_models["sd15"], tmp_path / "a", "ddpo", "rollout.eta=0"))
    with pytest.raises(ValueError, match=r"rollout.images_per_prompt to at least 2 \(got 1\)"):
        train(_cfg(tiny_models["sd15"], tmp_path / "b", "grpo", "rollout.images_per_prompt=1"))
    with pytest.raises(ValueError, match=r"must be a multiple of train.batch_size x processes = 4"):
        train(_cfg(tiny_models["sd15"], tmp_path / "c", "ddpo", "train.batch_size=4", "rollout.images_per_prompt=3"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_full_fine_tuning_with_the_kl_to_a_frozen_copy_of_the_base(tiny_models, tmp_path):
    result = train(_cfg(tiny_models["sd15"], tmp_path / "full", "ddpo", "lora.enabled=false", "train.max_steps=1",
                        "train.batch_size=4", "objective.kl_weight=0.1", "train.learning_rate=1e-4"))
    assert (result.weights / "diffusion_pytorch_model.safetensors").is_file()
    logged = json.loads((tmp_path / "full" / "metrics.jsonl").read_text().splitlines()[-1])
    assert logged["kl"] == 0.0 and logged["ratio"] == pytest.approx(1.0, abs=1e-6)  # the policy is the base at step 1

"""DGPO on online rollouts: the draws, the loss at the base model, steps on every model family, the EMA reference
and a killed run resuming to identical weights (methods/dgpo.py, training/ema_reference.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from diffalign.config.core import load_config
from diffalign.config.objectives import DGPOConfig
from diffalign.config.schema import LoraConfig, ModelConfig, ReferenceConfig, RunConfig
from diffalign.models.loading import load_parts
from diffalign.models.lora import attach_lora
from diffalign.models.reference import AdapterDisabledReference
from diffalign.sampling.trajectory import sample_trajectory
from diffalign.training.checkpoint import list_checkpoints
from diffalign.training.ema_reference import EMAReference
from diffalign.training.loop import train
from diffalign.training.methods.base import TrainableModel
from diffalign.training.methods.dgpo import DGPO
from diffalign.training.sources.online import Rollouts


def _round(tiny_models):
    """A deterministic round of 2 prompts x 3 images from distinct noises, and the model view DGPO trains."""
    parts = load_parts(ModelConfig(pretrained=str(tiny_models["sd15"])))
    attach_lora(parts.unet, LoraConfig(rank=4, alpha=4))
    parts.unet.eval()
    prompts = ["a red circle"] * 3 + ["a blue square"] * 3
    trajectory = sample_trajectory(parts, parts.unet, prompts, [1, 2, 3, 4, 5, 6], steps=3, eta=0.0, guidance=5.0)
    rollouts = Rollouts(0, ["a red circle", "a blue square"], trajectory,
                        torch.tensor([[0.1, 0.7, 0.4], [0.6, 0.2, 0.2]]))
    model = TrainableModel(parts.unet, AdapterDisabledReference(parts.unet), parts.noise_scheduler, "epsilon")
    return rollouts, model


def test_each_group_shares_one_noise_and_timestep_drawn_from_its_seed_and_the_micro_step(tiny_models):
    rollouts, model = _round(tiny_models)
    method = DGPO(DGPOConfig(timestep_min=0.5))
    noise, t = method.draws(rollouts, (4, 8, 8), 1000)
    assert torch.equal(noise[0], noise[2]) and torch.equal(noise[3], noise[5]) and not torch.equal(noise[0], noise[3])
    assert t[0] == t[1] == t[2] and t[3] == t[4] == t[5] and bool((t >= 500).all())
    again, t_again = method.draws(rollouts, (4, 8, 8), 1000)
    assert torch.equal(noise, again) and torch.equal(t, t_again)
    rollouts.substep = 1
    other, _ = method.draws(rollouts, (4, 8, 8), 1000)
    assert not torch.equal(noise, other)
    per_image, _ = DGPO(DGPOConfig(shared_noise=False)).draws(rollouts, (4, 8, 8), 1000)
    assert not torch.equal(per_image[0], per_image[1])


def test_at_the_base_model_every_group_weighs_one_half_and_the_kl_is_zero(tiny_models):
    rollouts, model = _round(tiny_models)
    method = DGPO(DGPOConfig(kl_weight=0.1))
    rollouts.advantages = method.advantages(rollouts)
    # group 0: rewards 0.1, 0.7, 0.4 (mean 0.4, std sqrt(0.06)): advantages -1.2247, 1.2247, 0
    torch.testing.assert_close(rollouts.advantages[0], torch.tensor([-1.2247, 1.2247, 0.0]), atol=1e-3, rtol=0)
    out = method(model, rollouts, None)
    assert out.metrics["weight"].item() == pytest.approx(0.5)  # LoRA B is zero: the policy is the base
    assert out.metrics["group_loss"].item() == pytest.approx(math.log(2))
    assert out.metrics["kl"].item() == 0.0
    out.loss.backward()
    grads = [p.grad for n, p in model.unet.named_parameters() if "lora_B" in n]
    assert any(g is not None and g.abs().max() > 0 for g in grads)


def test_the_ema_reference_averages_the_lora_weights_once_per_optimizer_step(tiny_models, tmp_path):
    parts = load_parts(ModelConfig(pretrained=str(tiny_models["sd15"])))
    attach_lora(parts.unet, LoraConfig(rank=4, alpha=4))
    ema = EMAReference(parts.unet, LoraConfig(rank=4, alpha=4), ReferenceConfig(ema_decay=0.3, ema_ramp=0.1))
    name = next(n for n in ema.trained if "lora_B" in n)
    with torch.no_grad():
        ema.trained[name].fill_(1.0)
    ema.refresh(1, 0, 0)  # d = min(0.3, 0.1 x 1) = 0.1: ema = 0 + 0.9 (1 - 0)
    assert torch.allclose(ema.ema[name], torch.full_like(ema.ema[name], 0.9))
    ema.refresh(1, 0, 1)  # the same optimizer step: no second update
    assert torch.allclose(ema.ema[name], torch.full_like(ema.ema[name], 0.9))
    with torch.no_grad():
        ema.trained[name].fill_(2.0)
    ema.refresh(5, 0, 2)  # d = min(0.3, 0.5) = 0.3: ema = 0.9 + 0.7 (2 - 0.9) = 1.67
    assert torch.allclose(ema.ema[name], torch.full_like(ema.ema[name], 1.67))
    sample = torch.randn(1, 4, 8, 8)
    kwargs = {"encoder_hidden_states": torch.randn(1, 77, parts.unet.config.cross_attention_dim)}
    t = torch.tensor([500])
    through_ema = ema.predict(sample, t, **kwargs)
    with torch.no_grad():
        trained = {n: p.clone() for n, p in ema.trained.items()}
        for n, p in ema.trained.items():
            p.copy_(ema.ema[n])
        direct = parts.unet(sample, t, **kwargs).sample
        for n, p in ema.trained.items():
            p.copy_(trained[n])
    torch.testing.assert_close(through_ema, direct)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    ema.save(folder, 0)
    fresh = load_parts(ModelConfig(pretrained=str(tiny_models["sd15"])))
    attach_lora(fresh.unet, LoraConfig(rank=4, alpha=4))
    other = EMAReference(fresh.unet, LoraConfig(rank=4, alpha=4), ReferenceConfig())
    other.restore(folder, 0)
    assert other.updated == 5 and torch.equal(other.ema[name], ema.ema[name])


def _cfg(model, out, *extra):
    return load_config(RunConfig, None, [
        f"model.pretrained={model}", "objective.name=dgpo", "objective.timesteps=2", "rollout.steps=3",
        "rollout.eta=0", "rollout.initial_noise=distinct", "rollout.prompts_per_round=2", "rollout.images_per_prompt=2",
        "rollout.sample_batch_size=4", "rollout.compare_base=false", "train.batch_size=1", "train.max_steps=4",
        "train.checkpoint_every=1", "train.keep_checkpoints=1", "train.learning_rate=3e-2", "train.warmup_steps=0",
        "train.trackers=[]", "validation.every=0", f"train.output_dir={out}", *extra])


@pytest.mark.parametrize("family", ["sd15", "sd21-v", "sdxl"])
def test_training_steps_on_every_model_family(tiny_models, tmp_path, family):
    result = train(_cfg(tiny_models[family], tmp_path / "run", "train.max_steps=2", "train.batch_size=2"))
    weights = load_file(str(result.weights))
    assert any(v.abs().max() > 0 for k, v in weights.items() if "lora_B" in k)
    rounds = [json.loads(line) for line in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1]
    for key in ("reward_mean", "advantage_std", "group_loss", "weight", "kl", "sample_s", "train_s"):
        assert all(r[key] == r[key] for r in rounds), key


def test_a_killed_run_with_the_ema_reference_and_clip_resumes_to_the_same_weights(tiny_models, tmp_path,
                                                                                 monkeypatch):
    crash_at = 3  # inside round 1, at its second batch (a round boundary is the online source's, tested there)
    # 2 prompts a round, 1 a micro-batch, 2 timesteps each: 2 optimizer steps a round
    extra = ("objective.reference=ema", "objective.clip_range=0.05", "objective.beta=2000", "reference.ema_ramp=0.1")
    model = tiny_models["sd15"]
    whole = train(_cfg(model, tmp_path / "whole", *extra))
    calls, real = {"n": 0}, DGPO.__call__

    def crash(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2 * crash_at + 1:
            raise RuntimeError("killed")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DGPO, "__call__", crash)
    with pytest.raises(RuntimeError, match="killed"):
        train(_cfg(model, tmp_path / "broken", *extra))
    monkeypatch.setattr(DGPO, "__call__", real)
    (checkpoint,) = list_checkpoints(tmp_path / "broken")
    assert checkpoint.name == f"step-{crash_at:08d}"
    assert (checkpoint / "reference_ema.safetensors").is_file()
    resumed = train(_cfg(model, tmp_path / "broken", *extra, "train.resume=latest"))
    a, b = load_file(str(whole.weights)), load_file(str(resumed.weights))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(v.abs().max() > 0 for k, v in a.items() if "lora_B" in k)
    logged = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert any(entry.get("clip_fraction", 0) >= 0 for entry in logged)


def test_settings_dgpo_cannot_train_with_are_refused_before_loading(tiny_models, tmp_path):
    model = tiny_models["sd15"]
    with pytest.raises(ValueError, match=r"set rollout.eta=0 \(got 1.0\)"):
        train(_cfg(model, tmp_path / "a", "rollout.eta=1"))
    with pytest.raises(ValueError, match=r"set rollout.initial_noise=distinct"):
        train(_cfg(model, tmp_path / "b", "rollout.initial_noise=shared"))
    with pytest.raises(ValueError, match=r"rollout.images_per_prompt to at least 2 \(got 1\)"):
        train(_cfg(model, tmp_path / "c", "rollout.images_per_prompt=1"))
    with pytest.raises(ValueError, match=r"with reference=ema keeps an EMA of the LoRA weights: set lora.enabled=true"):
        train(_cfg(model, tmp_path / "d", "objective.reference=ema", "lora.enabled=false"))
    assert not any((tmp_path / x).exists() for x in "abcd")

import json
import math

import pytest
import torch

from diffalign.config.core import load_config
from diffalign.config.schema import RunConfig
from diffalign.training.loop import train


def run_config(model, pairs, out, *overrides):
    base = [
        f"model.pretrained={model}",
        f"data.path={pairs}",
        f"train.output_dir={out}",
        "train.max_steps=2",
        "train.batch_size=2",
        "train.log_every=1",
        "train.warmup_steps=0",
        "data.empty_prompt_prob=0.5",
    ]
    return load_config(RunConfig, None, base + list(overrides))


@pytest.mark.parametrize("family", ["sd15", "sd21-v", "sdxl"])
def test_dpo_lora_step_on_each_family(tiny_models, pair_file, tmp_path, family):
    result = train(run_config(tiny_models[family], pair_file, tmp_path / "run"))
    assert result.weights.name == "pytorch_lora_weights.safetensors" and result.weights.exists()
    assert (tmp_path / "run" / "config.yaml").exists()
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(log) == 2
    # LoRA starts at B = 0: the policy equals the reference, so the first loss is exactly ln 2
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert log[0]["implicit_acc"] == 0.5
    assert all(math.isfinite(entry["loss"]) for entry in log)
    saved = load_config(RunConfig, tmp_path / "run" / "config.yaml")
    assert saved.model.pretrained == str(tiny_models[family])


def test_sft_full_finetune_step(tiny_models, pair_file, tmp_path):
    cfg = run_config(tiny_models["sd15"], pair_file, tmp_path / "sft", "objective.name=sft", "lora.enabled=false")
    result = train(cfg)
    assert (result.weights / "diffusion_pytorch_model.safetensors").exists()
    from diffusers import UNet2DConditionModel

    tuned = UNet2DConditionModel.from_pretrained(result.weights)  # a stock diffusers model folder
    base = UNet2DConditionModel.from_pretrained(tiny_models["sd15"], subfolder="unet")
    tuned_sd, base_sd = tuned.state_dict(), base.state_dict()
    assert tuned_sd.keys() == base_sd.keys()
    assert any(not torch.equal(tuned_sd[k], base_sd[k]) for k in base_sd)  # the trained weights, not the base's
    card = (tmp_path / "sft" / "README.md").read_text()  # the model card says what was trained and how to load it
    assert "- full-fine-tune\n" in card and "- sft\n" in card and "UNet2DConditionModel.from_pretrained(" in card


def test_full_finetune_dpo_uses_frozen_reference(tiny_models, pair_file, tmp_path):
    cfg = run_config(tiny_models["sd15"], pair_file, tmp_path / "full", "lora.enabled=false", "train.max_steps=1")
    log = train(cfg).metrics
    assert log["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_ties_are_dropped_and_counted(pair_file, tiny_models, tmp_path, capsys):
    train(run_config(tiny_models["sd15"], pair_file, tmp_path / "r", "train.max_steps=1"))
    assert "12 decided pairs (14 rows read, 12 kept, 2 dropped (2 tie))" in capsys.readouterr().out


def test_dpo_fits_a_fixed_batch_of_the_demo(tmp_path):
    """On 4 demo pairs the implicit accuracy rises to 1 and the loss falls well below ln 2."""
    cfg = load_config(RunConfig, None, [
        f"train.output_dir={tmp_path / 'fit'}", "train.max_steps=30", "train.batch_size=4", "data.max_pairs=4",
        "train.learning_rate=1e-3", "objective.beta=500", "data.random_flip=false", "data.empty_prompt_prob=0",
        "train.log_every=1", "train.warmup_steps=0",
    ])
    result = train(cfg)
    log = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    mean = lambda key, part: sum(e[key] for e in part) / len(part)  # noqa: E731
    assert mean("loss", log[-5:]) < mean("loss", log[:5]) - 0.1
    assert mean("implicit_acc", log[-5:]) >= 0.75 and mean("reward_margin", log[-5:]) > 0

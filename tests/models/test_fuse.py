"""Fusing a LoRA into its base: the fused pipeline folder predicts what base + LoRA predicts."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel

from diffalign.config.schema import LoraConfig, ModelConfig
from diffalign.models.fuse import fuse_lora
from diffalign.models.loading import load_parts
from diffalign.models.lora import attach_lora, save_lora


def test_fused_model_matches_base_plus_lora(tiny_models, tmp_path):
    base = str(tiny_models["sd15"])
    unet = load_parts(ModelConfig(pretrained=base)).unet
    params = attach_lora(unet, LoraConfig(rank=4, alpha=4))
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
    save_lora(unet, tmp_path / "run", "sd")
    g = torch.Generator().manual_seed(0)
    sample, t, text = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([3, 700]), torch.randn(2, 77, 32, generator=g)

    pipe = DiffusionPipeline.from_pretrained(base)
    pipe.load_lora_weights(str(tmp_path / "run"))
    with torch.no_grad():
        expected = pipe.unet(sample, t, encoder_hidden_states=text).sample
        plain = UNet2DConditionModel.from_pretrained(base, subfolder="unet")(sample, t, encoder_hidden_states=text).sample

    out = fuse_lora(base, tmp_path / "run", tmp_path / "fused")
    assert out == tmp_path / "fused" and (out / "model_index.json").is_file()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary folder left behind
    fused = UNet2DConditionModel.from_pretrained(out, subfolder="unet")
    with torch.no_grad():
        got = fused(sample, t, encoder_hidden_states=text).sample
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)  # the LoRA did change the model
    assert json.loads((out / "fused_from.json").read_text())["lora"] == str(tmp_path / "run")
    assert not list(out.rglob("*lora*"))


def test_missing_lora_is_a_clear_error(tiny_models, tmp_path):
    with pytest.raises(FileNotFoundError, match="pytorch_lora_weights.safetensors not found"):
        fuse_lora(str(tiny_models["sd15"]), tmp_path, tmp_path / "fused")

"""Precision and memory switches: they take effect, or fail with a message that says what to do."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from diffusers import UNet2DConditionModel

from diffalign.config.core import load_config
from diffalign.config.schema import RunConfig
from diffalign.models.loading import load_parts
from diffalign.training.setup import build_optimizer, check_channels_last, configure_unet, prepare_unet


def _cfg(*overrides):
    return load_config(RunConfig, None, list(overrides))


def test_gradient_checkpointing_is_switched_on(tiny_models):
    unet = UNet2DConditionModel.from_pretrained(tiny_models["sd15"], subfolder="unet")
    configure_unet(unet, _cfg("train.gradient_checkpointing=true"))
    assert unet.is_gradient_checkpointing


@pytest.mark.skipif(importlib.util.find_spec("xformers") is not None, reason="xformers is installed")
def test_xformers_without_xformers_is_a_clear_error(tiny_models):
    unet = UNet2DConditionModel.from_pretrained(tiny_models["sd15"], subfolder="unet")
    with pytest.raises(RuntimeError, match=r"xformers is not installed: pip install 'diffalign\[gpu\]'"):
        configure_unet(unet, _cfg("train.attention=xformers"))


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_8bit_adam_without_bitsandbytes_is_a_clear_error():
    with pytest.raises(RuntimeError, match="needs bitsandbytes"):
        build_optimizer([torch.nn.Parameter(torch.zeros(2))], _cfg("train.optimizer=adamw8bit"), 1e-3)


def test_offloading_the_reference_is_for_full_finetuning_only(tiny_models):
    cfg = _cfg(f"model.pretrained={tiny_models['sd15']}", "train.offload_reference=true")
    parts = load_parts(cfg.model, encoders=False)
    with pytest.raises(ValueError, match="offload_reference is for full fine-tuning"):
        prepare_unet(cfg, parts, "base", torch.device("cpu"))
    full = _cfg(f"model.pretrained={tiny_models['sd15']}", "train.offload_reference=true", "lora.enabled=false")
    params, reference = prepare_unet(full, load_parts(full.model, encoders=False), "base", torch.device("cpu"))
    assert reference is not None and reference.unet is not parts.unet and params


@pytest.mark.parametrize("lora", [True, False])
def test_channels_last_lays_out_every_4d_weight_and_the_frozen_reference_too(tiny_models, lora):
    cfg = _cfg(f"model.pretrained={tiny_models['sd15']}", "train.channels_last=true", f"lora.enabled={str(lora).lower()}")
    parts = load_parts(cfg.model, encoders=False)
    _, reference = prepare_unet(cfg, parts, "base", torch.device("cpu"))
    unets = [parts.unet] if lora else [parts.unet, reference.unet]
    weights = [p for unet in unets for p in unet.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    assert all(not p.is_contiguous() for p in weights if p.shape[-1] > 1)  # (1x1 kernels are both layouts)
    default = load_parts(_cfg(f"model.pretrained={tiny_models['sd15']}").model, encoders=False).unet
    assert all(p.is_contiguous() for p in default.parameters())
    check_channels_last(cfg, sharded=False)
    with pytest.raises(ValueError, match="FSDP-sharded UNet is not supported"):
        check_channels_last(cfg, sharded=True)


def test_adamw_is_fused_by_default_and_updates_as_the_for_loop_kernel():
    torch.manual_seed(0)
    shapes = [(8, 4), (4,), (16, 8, 3)]
    runs = {}
    for fused in (True, False):
        params = [torch.nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(i)))
                  for i, shape in enumerate(shapes)]
        optimizer = build_optimizer(params, _cfg(f"train.fused_optimizer={str(fused).lower()}"), 1e-2)
        assert bool(optimizer.defaults.get("fused")) is fused
        for step in range(5):
            for i, p in enumerate(params):
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(100 * step + i))
            optimizer.step()
        runs[fused] = params
    for a, b in zip(runs[True], runs[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    sharded = build_optimizer([torch.nn.Parameter(torch.zeros(2))], _cfg(), 1e-3, sharded=True)
    assert sharded.defaults["foreach"] and not sharded.defaults.get("fused")

"""`train.compile`: the LoRA reference runs the trained model's compiled graph, so DPO starts at ln 2 in bf16.

Compilation is slow on a CPU, so one training test compiles (its transformer block for `blocks`, then the
whole UNet for `unet`; ~38 s here), on a one-level UNet with cross-attention (and so LoRA layers) on its way
down only. Another graph than the policy's would fail it: on the tiny demo UNet in bf16 at beta 5000, a
compiled adapters-off reference started the DPO logit at up to 6.1, a compiled no-gradient pass at 2.8, the
eager model at 8.7 (measured on this CPU, 2026-12-06); on this test's UNet with `blocks`, an adapters-off
reference started the loss at 0.621 instead of 0.693.
"""

import json
import math

import pytest
import torch
from diffusers import UNet2DConditionModel
from peft.utils.hotswap import prepare_model_for_compiled_hotswap

from diffalign.config.core import load_config
from diffalign.config.schema import LoraConfig, RunConfig
from diffalign.models.lora import attach_lora
from diffalign.models.reference import CompiledAdapterReference, compile_unet
from diffalign.models.tiny import TEXT_WIDTH, save_tiny_pipeline
from diffalign.training.loop import train
from diffalign.training.methods import build_method
from diffalign.training.setup import check_compile


def _one_level_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, block_out_channels=(16,), layers_per_block=1, down_block_types=("CrossAttnDownBlock2D",),
        up_block_types=("UpBlock2D",), mid_block_type=None, cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8, norm_num_groups=8,
    )


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one mixed-precision setting per process: these bf16 runs start and leave it unset."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


@pytest.fixture
def scalar_kernels():
    """Inductor's C++ kernels without SIMD: a quarter less compilation on this CPU; graphs and fusions are the
    same, which is what the test is about."""
    import torch._inductor.config

    with torch._inductor.config.patch({"cpp.vec_isa_ok": False}):
        yield


@pytest.fixture(scope="module")
def one_level_model(tmp_path_factory, clip_tokenizers):
    folder = tmp_path_factory.mktemp("one-level")
    return save_tiny_pipeline(folder, unet=_one_level_unet(), tokenizer=clip_tokenizers[0])


def _cfg(model, pairs, out, *overrides):
    return load_config(RunConfig, None, [
        f"model.pretrained={model}", f"data.path={pairs}", f"train.output_dir={out}", f"data.cache_dir={out}/cache",
        "train.max_steps=2", "train.batch_size=2", "train.grad_accum=2", "train.log_every=1", "train.warmup_steps=0",
        "train.checkpoint_every=0", "validation.every=0", "train.trackers=[]", "train.mixed_precision=bf16",
        "objective.beta=5000", *overrides,
    ])


@pytest.mark.slow
def test_compiled_bf16_runs_start_at_ln2_with_and_without_the_pre_pass(one_level_model, pair_file, tmp_path, capsys,
                                                                      fresh_accelerator_state, scalar_kernels):
    pre = train(_cfg(one_level_model, pair_file, tmp_path / "pre", "train.compile=blocks", "reference.precompute=on"))
    assert "reference errors: 4 micro-steps, 4 computed now" in capsys.readouterr().out
    per_step = train(_cfg(one_level_model, pair_file, tmp_path / "per-step", "train.compile=blocks",
                          "reference.precompute=off"))
    whole = train(_cfg(one_level_model, pair_file, tmp_path / "whole", "train.compile=unet", "train.max_steps=1"))
    a, b, c = ([json.loads(line) for line in (r.output_dir / "metrics.jsonl").read_text().splitlines()]
               for r in (pre, per_step, whole))
    # the policy (LoRA zero) and its reference are one graph: equal errors, a zero logit, exactly ln 2
    assert a[0]["loss"] == b[0]["loss"] == c[0]["loss"] == pytest.approx(math.log(2), abs=1e-7)
    for row in (a[0], c[0]):
        assert row["model_err_w"] == row["ref_err_w"] and row["model_err_l"] == row["ref_err_l"]
    assert [row["loss"] for row in a] == [row["loss"] for row in b]  # the pre-pass stored that graph's errors
    assert a[1]["loss"] != a[0]["loss"]  # it trained


def test_compile_blocks_names_the_way_out_for_a_unet_without_repeated_blocks():
    unet = _one_level_unet()
    unet._repeated_blocks = []  # as a UNet class diffusers has not marked
    with pytest.raises(ValueError, match="train.compile=unet"):
        compile_unet(unet, "blocks")


def test_the_compiled_reference_zeroes_the_lora_scale_and_leaves_the_policy_backward_intact():
    unet = _one_level_unet()
    unet.requires_grad_(False)
    attach_lora(unet, LoraConfig(rank=4, alpha=4))
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    prepare_model_for_compiled_hotswap(unet)  # what compile_unet does before compiling (not done here: eager)
    generator = torch.Generator().manual_seed(0)
    x, c = torch.randn(4, 4, 8, 8, generator=generator), torch.randn(4, 77, TEXT_WIDTH, generator=generator)
    t = torch.tensor([10, 300, 600, 900])
    policy = unet(x, t, c).sample
    reference = CompiledAdapterReference(unet).predict(x, t, encoder_hidden_states=c)
    unet.disable_adapters()
    base = unet(x, t, c).sample
    unet.enable_adapters()
    assert torch.equal(reference, base.detach()) and not reference.requires_grad
    assert not torch.equal(reference, policy.detach())
    assert torch.equal(unet(x, t, c).sample, policy)  # the scales are back
    policy.pow(2).mean().backward()  # the scalings it zeroed and restored were saved by this graph
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in unet.named_parameters() if "lora_A" in n)


@pytest.mark.parametrize("overrides,why", [
    (["objective.name=d3po"], "online methods"),
    (["objective.name=seppo"], "reference pool"),
    (["lora.enabled=false"], "full fine-tuning"),
])
def test_compile_is_refused_where_the_reference_would_be_another_graph(tmp_path, overrides, why):
    cfg = _cfg("m", "p", tmp_path, "train.compile=blocks", *overrides)
    with pytest.raises(ValueError, match=why):
        check_compile(cfg, build_method(cfg.objective), sharded=False)
    with pytest.raises(ValueError, match="FSDP"):
        check_compile(_cfg("m", "p", tmp_path, "train.compile=unet"), build_method(cfg.objective), sharded=True)

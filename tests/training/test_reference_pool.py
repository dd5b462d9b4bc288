"""The reference pool: earlier LoRA states kept every N steps (K newest), chosen per micro-step, predicting as the
UNet did at that step, without disturbing the trained adapter; saved and restored with checkpoints."""

from __future__ import annotations

import torch

from diffalign.config.schema import LoraConfig, ModelConfig, ReferenceConfig
from diffalign.models.loading import load_parts
from diffalign.models.lora import attach_lora
from diffalign.training.reference_pool import ReferencePool


def _unet(tiny_models):
    unet = load_parts(ModelConfig(pretrained=str(tiny_models["sd15"])), encoders=False).unet
    params = attach_lora(unet, LoraConfig(rank=4, alpha=4))
    return unet, params


def _inputs(unet):
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=g)
    hidden = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    return sample, torch.tensor([10, 500]), {"encoder_hidden_states": hidden}


def _train_step(params, value: float) -> None:
    with torch.no_grad():
        for p in params:
            p.fill_(value)


def test_pool_keeps_every_n_steps_and_predicts_as_the_unet_did(tiny_models, tmp_path):
    unet, params = _unet(tiny_models)
    pool = ReferencePool(unet, LoraConfig(rank=4, alpha=4), ReferenceConfig(every=2, keep=2, selection="latest"))
    assert all(p.requires_grad for p in params)
    sample, t, kwargs = _inputs(unet)
    initial = unet(sample, t, **kwargs).sample.detach()
    outputs = {}
    for step in range(1, 7):
        _train_step(params, 0.01 * step)
        if step % 2 == 0:
            outputs[step] = unet(sample, t, **kwargs).sample.detach()
        pool.refresh(step, seed=0, micro_step=step)
    assert pool.members() == [0, 4, 6]  # the newest 2 of steps 2, 4, 6, beside the initial model
    assert pool.current == 6
    torch.testing.assert_close(pool.predict(sample, t, **kwargs), outputs[6])
    assert all(p.requires_grad for p in params)  # the trained adapter stays trainable and active
    torch.testing.assert_close(unet(sample, t, **kwargs).sample, outputs[6])
    pool.current = 4
    torch.testing.assert_close(pool.predict(sample, t, **kwargs), outputs[4])
    pool.current = 0
    torch.testing.assert_close(pool.predict(sample, t, **kwargs), initial)

    pool.save(tmp_path, rank=0)
    again_unet, _ = _unet(tiny_models)
    again = ReferencePool(again_unet, LoraConfig(rank=4, alpha=4), ReferenceConfig(every=2, keep=2))
    again.restore(tmp_path, rank=0)
    assert again.members() == [0, 4, 6]
    again.current = 4
    torch.testing.assert_close(again.predict(sample, t, **kwargs), outputs[4])


def test_selection_strategies(tiny_models):
    unet, params = _unet(tiny_models)
    pool = ReferencePool(unet, LoraConfig(rank=4, alpha=4), ReferenceConfig(every=1, keep=3, selection="random"))
    for step in range(1, 5):
        _train_step(params, 0.01 * step)
        pool.refresh(step, seed=0, micro_step=step)
    chosen = [pool.refresh(4, seed=0, micro_step=m) for m in range(40)]
    assert set(chosen) == {0, 2, 3, 4}  # uniform over the initial model and the kept states
    assert chosen == [pool.refresh(4, seed=0, micro_step=m) for m in range(40)]  # a function of (seed, micro-step)
    pool.cfg.selection = "initial"
    assert pool.refresh(4, seed=0, micro_step=0) == 0


def test_a_pool_method_trains_and_resumes_with_its_pool(tiny_models, pair_file, tmp_path):
    from dataclasses import dataclass

    from safetensors.torch import load_file

    from diffalign.config.core import cfg_field, load_config
    from diffalign.config.objectives import DPOConfig, objective, unregister_objective
    from diffalign.config.schema import RunConfig
    from diffalign.training.checkpoint import list_checkpoints
    from diffalign.training.loop import train
    from diffalign.training.methods.dpo import DPO

    @dataclass
    class PoolDPOConfig(DPOConfig):
        name: str = cfg_field("pool-dpo", "DPO against earlier states of the run (test only).")

    class PoolDPO(DPO):
        reference = "pool"

    objective("pool-dpo", method=PoolDPO)(PoolDPOConfig)
    try:
        def run(out, *extra):
            return train(load_config(RunConfig, None, [
                f"model.pretrained={tiny_models['sd15']}", f"data.path={pair_file}", "objective.name=pool-dpo",
                "reference.every=1", "reference.keep=2", "train.max_steps=4", "train.batch_size=2",
                "train.learning_rate=1e-2", "train.warmup_steps=0", "train.lr_scheduler=constant", "train.trackers=[]", "validation.every=0",
                "train.checkpoint_every=2", f"train.output_dir={tmp_path / out}", *extra]))

        whole = run("whole")
        (checkpoint,) = list_checkpoints(tmp_path / "whole")
        assert checkpoint.name == "step-00000002" and (checkpoint / "reference_pool.safetensors").is_file()
        # what a run stopped after its step-2 checkpoint would leave (the same seed writes the same bytes)
        resumed = run("part", f"train.resume={checkpoint}")
        a, b = load_file(str(whole.weights)), load_file(str(resumed.weights))
        for key in a:
            assert torch.equal(a[key], b[key]), key
    finally:
        unregister_objective("pool-dpo")

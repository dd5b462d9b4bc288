"""FSDP2 checkpoints: written from shards as whole tensors by name, and resumed to identical weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from diffalign.training.checkpoint import checkpoint_dir
from diffalign.training.setup import check_distributed

WORKER = Path(__file__).with_name("fsdp_worker.py")


def _torchrun(*args: str, port: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    result = subprocess.run([*launch, str(WORKER), *args], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "port"), [("full", 29561), ("lora", 29562)])  # ports no other test uses
def test_fsdp2_checkpoint_resumes_to_identical_weights(tiny_models, tmp_path, kind, port):
    model = str(tiny_models["sd15"])
    _torchrun(model, str(tmp_path), "straight,resume", kind, port=port)

    straight = load_file(str(tmp_path / "final-straight.safetensors"))
    resumed = load_file(str(tmp_path / "final-resume.safetensors"))
    saved = load_file(str(checkpoint_dir(tmp_path, 2) / "trainable.safetensors"))
    assert straight.keys() == resumed.keys() == saved.keys()
    # whole tensors with the UNet's own names and shapes, not shards
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    if kind == "full":
        shapes = {k: v.shape for k, v in unet.state_dict().items()}
        assert {k: v.shape for k, v in saved.items()} == shapes
    else:
        assert all(".lora_A." in k or ".lora_B." in k for k in saved)
        lora_file = load_file(str(checkpoint_dir(tmp_path, 2) / "pytorch_lora_weights.safetensors"))
        as_in_file = {"unet." + k.replace(".default.", "."): v for k, v in saved.items()}
        assert lora_file.keys() == as_in_file.keys()  # the diffusers LoRA file holds the gathered tensors
        assert all(torch.equal(lora_file[k], v) for k, v in as_in_file.items())
    assert any(not torch.equal(saved[k], straight[k]) for k in saved)  # steps 3-4 did train
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k


def _accelerator(kind: DistributedType, fsdp_version: int | None = None) -> SimpleNamespace:
    plugin = SimpleNamespace(fsdp_version=fsdp_version)
    return SimpleNamespace(distributed_type=kind, state=SimpleNamespace(fsdp_plugin=plugin))


def test_deepspeed_and_fsdp1_are_refused_with_the_way_out():
    with pytest.raises(ValueError, match="configs/accelerate/fsdp.yaml"):
        check_distributed(_accelerator(DistributedType.DEEPSPEED))
    with pytest.raises(ValueError, match="fsdp_version: 2"):
        check_distributed(_accelerator(DistributedType.FSDP, 1))
    check_distributed(_accelerator(DistributedType.FSDP, 2))
    check_distributed(_accelerator(DistributedType.MULTI_GPU))

"""`diffalign fuse`: a LoRA run becomes a pipeline folder that `diffalign eval` takes as the tuned model."""

from __future__ import annotations

import pytest
import torch

from diffalign.cli.main import main
from diffalign.config.schema import LoraConfig, ModelConfig
from diffalign.models.loading import load_parts
from diffalign.models.lora import attach_lora, save_lora


def test_fuse_command_and_missing_base(tiny_models, tmp_path, capsys):
    base = str(tiny_models["sd15"])
    unet = load_parts(ModelConfig(pretrained=base)).unet
    with torch.no_grad():
        for p in attach_lora(unet, LoraConfig(rank=4, alpha=4)):
            p.add_(0.05)
    save_lora(unet, tmp_path / "lora", "sd")
    assert main(["fuse", str(tmp_path / "lora"), "--out", str(tmp_path / "fused")]) == 2  # no config.yaml, no --base
    assert "pass --base MODEL" in capsys.readouterr().err
    assert main(["fuse", str(tmp_path / "lora"), "--base", base, "--out", str(tmp_path / "fused")]) == 0
    assert (tmp_path / "fused" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert "fused" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["fuse", "--help"], ["pipeline", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0 and "usage: diffalign" in capsys.readouterr().out

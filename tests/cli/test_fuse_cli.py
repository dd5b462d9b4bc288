"""`diffalign fuse`: a LoRA run becomes a pipeline folder that `diffalign eval` takes as the tuned model."""

from __future__ import annotations

import pytest

from diffalign.cli.main import main


def test_fuse_command_and_missing_base(tiny_models, make_lora, tmp_path, capsys):
    base = str(tiny_models["sd15"])
    make_lora(base, tmp_path / "lora", 0.05)
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

"""`diffalign export`: the command writes the kohya file beside the run, and refuses bad input in one line."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from diffalign.cli.main import main


def test_export_writes_kohya_beside_the_lora(tiny_models, make_lora, tmp_path, capsys):
    lora = make_lora(tiny_models["sd15"], tmp_path / "lora", 0.05)
    assert main(["export", str(lora)]) == 0
    out = lora / "lora-kohya.safetensors"
    assert f": {out}" in capsys.readouterr().out
    with safe_open(out, framework="pt") as file:
        assert all(key.startswith("lora_unet_") for key in file.keys())
        assert file.metadata()["ss_network_alpha"] == "4.0"  # no config.yaml: alpha = rank


@pytest.mark.parametrize("case", ["full-run", "full-checkpoint", "empty", "missing", "format", "out"])
def test_export_refuses_bad_input(tmp_path, capsys, case):
    folder = tmp_path / "run"
    folder.mkdir()
    argv = ["export", str(folder)]
    if case == "full-run":
        (folder / "unet").mkdir()
        (folder / "unet" / "config.json").write_text("{}")
        expected = f"{folder} is a full fine-tuning run, not a LoRA: its fine-tuned UNet is {folder / 'unet'}"
    elif case == "full-checkpoint":
        (folder / "trainable.safetensors").write_bytes(b"")
        expected = f"{folder} is a checkpoint of a full fine-tuning run, not a LoRA"
    elif case == "empty":
        expected = f"{folder} holds no LoRA (pytorch_lora_weights.safetensors not found)"
    elif case == "missing":
        argv = ["export", str(tmp_path / "nowhere")]
        expected = f"{tmp_path / 'nowhere'} not found: give a `diffalign train` LoRA run folder"
    elif case == "format":
        argv += ["--format", "ckpt"]
        expected = f"unknown --format 'ckpt' for exporting {folder}: choose kohya"
    else:
        argv += ["--out", str(tmp_path)]
        expected = f"--out {tmp_path} is a folder"
        save_file({"unet.a.lora_A.weight": torch.ones(2, 3), "unet.a.lora_B.weight": torch.ones(3, 2)},
                  folder / "pytorch_lora_weights.safetensors")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"diffalign export: error: {expected}" in err, err
    assert len(err.strip().splitlines()) == 2  # the message and the DIFFALIGN_DEBUG hint

"""`diffalign fuse`: a LoRA run becomes a pipeline folder that `diffalign eval` takes as the tuned model."""

from __future__ import annotations

import pytest

from diffalign.cli.main import main
from diffalign.models.lora_files import LORA_WEIGHTS

from ..models.lora_cases import MESSAGES, write_bad_loras
from ..permissions import modes, umask


@pytest.fixture(scope="module")
def bad_loras(tiny_models, make_lora, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    good = make_lora(tiny_models["sd15"], root / "good", 0.05)
    return write_bad_loras(good, make_lora(tiny_models["sdxl"], root / "sdxl", 0.05), root / "bad")


def test_fuse_command_and_missing_base(tiny_models, make_lora, tmp_path, capsys):
    base = str(tiny_models["sd15"])
    make_lora(base, tmp_path / "lora", 0.05)
    assert main(["fuse", str(tmp_path / "lora"), "--out", str(tmp_path / "fused")]) == 2  # no config.yaml, no --base
    assert "pass --base MODEL" in capsys.readouterr().err
    assert main(["fuse", str(tmp_path / "lora"), "--base", base, "--out", str(tmp_path / "fused")]) == 0
    assert (tmp_path / "fused" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert "fused" in capsys.readouterr().out


@pytest.mark.parametrize("case", list(MESSAGES))
def test_fuse_refuses_a_lora_that_does_not_fit(tiny_models, bad_loras, case, tmp_path, capsys):
    out = tmp_path / "fused"
    assert main(["fuse", str(bad_loras[case]), "--base", str(tiny_models["sd15"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"diffalign fuse: error: LoRA {bad_loras[case] / LORA_WEIGHTS}" in err and MESSAGES[case] in err
    assert not out.exists()


def test_fuse_into_a_file_is_refused_before_loading(tiny_models, make_lora, tmp_path, capsys):
    make_lora(tiny_models["sd15"], tmp_path / "lora", 0.05)
    (tmp_path / "taken").write_text("not a folder")
    argv = ["fuse", str(tmp_path / "lora"), "--base", str(tiny_models["sd15"]), "--out"]
    assert main([*argv, str(tmp_path / "taken")]) == 2
    assert f"output folder {tmp_path / 'taken'} is a file, not a folder" in capsys.readouterr().err
    assert main([*argv, str(tmp_path / "taken" / "fused")]) == 2
    assert f"{tmp_path / 'taken'}, on its path, is a file, not a folder" in capsys.readouterr().err


def test_the_lora_and_the_fused_files_get_the_umask_permissions(tiny_models, make_lora, tmp_path):
    with umask(0o027):
        make_lora(tiny_models["sd15"], tmp_path / "lora", 0.05)
        assert main(["fuse", str(tmp_path / "lora"), "--base", str(tiny_models["sd15"]), "--out",
                     str(tmp_path / "fused")]) == 0
    written = modes(tmp_path)
    assert written["lora/pytorch_lora_weights.safetensors"] == 0o640  # safetensors writes 0600 files
    assert written["fused/unet/diffusion_pytorch_model.safetensors"] == 0o640
    assert written["fused"] == written["fused/unet"] == 0o750  # mkdtemp makes 0700 folders
    assert {mode for path, mode in written.items() if (tmp_path / path).is_file()} == {0o640}


@pytest.mark.parametrize("argv", [["fuse", "--help"], ["pipeline", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0 and "usage: diffalign" in capsys.readouterr().out


def test_dtype_auto_is_float32_without_cuda_and_old_spellings_warn(tiny_models, make_lora, tmp_path, capsys):
    from safetensors import safe_open

    make_lora(tiny_models["sd15"], tmp_path / "lora", 0.05)
    argv = ["fuse", str(tmp_path / "lora"), "--base", str(tiny_models["sd15"])]
    assert main([*argv, "--dtype", "auto", "--out", str(tmp_path / "auto")]) == 0
    assert main([*argv, "--dtype", "fp16", "--out", str(tmp_path / "half")]) == 0
    assert "diffalign: deprecated: --dtype fp16 is now --dtype float16" in capsys.readouterr().err
    for folder, dtype in (("auto", "F32"), ("half", "F16")):  # this machine has no CUDA: auto is float32
        with safe_open(tmp_path / folder / "unet" / "diffusion_pytorch_model.safetensors", "pt") as weights:
            assert {weights.get_slice(key).get_dtype() for key in weights.keys()} == {dtype}

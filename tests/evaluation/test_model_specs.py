"""How `generate` and `eval` read a model argument: hub id, pipeline folder, LoRA run or full fine-tuning run."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from diffalign.evaluation.model_specs import ModelSpec, parse_lora, resolve_model


def test_parse_lora():
    assert parse_lora("out/run") == ("out/run", 1.0)
    assert parse_lora("out/run@0.5") == ("out/run", 0.5)
    with pytest.raises(ValueError, match="PATH@SCALE"):
        parse_lora("out/run@half")


def test_resolve_each_kind_of_model(tmp_path):
    assert resolve_model("org/model") == ModelSpec("org/model", "org/model")
    pipe = tmp_path / "fused"
    pipe.mkdir()
    (pipe / "model_index.json").write_text("{}")
    assert resolve_model(str(pipe), name="r1") == ModelSpec("r1", str(pipe))

    lora = tmp_path / "lora-run"
    lora.mkdir()
    save_file({"unet.x.lora_A.weight": torch.zeros(1, 1)}, lora / "pytorch_lora_weights.safetensors")
    (lora / "config.yaml").write_text("model:\n  pretrained: org/base\n")
    assert resolve_model(f"{lora}@0.7") == ModelSpec("lora-run", "org/base", None, [(str(lora), 0.7)])
    assert resolve_model(str(lora), base="other/base").pipeline == "other/base"

    full = tmp_path / "full-run"
    (full / "unet").mkdir(parents=True)
    (full / "unet" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="give --base"):
        resolve_model(str(full))
    assert resolve_model(str(full), base="org/base") == ModelSpec("full-run", "org/base", str(full / "unet"))

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="neither a pipeline folder"):
        resolve_model(str(empty))



def test_a_broken_lora_file_is_refused_before_any_work(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model:\n  pretrained: org/base\n")
    (run / "pytorch_lora_weights.safetensors").write_bytes(b"\x80\x02}q\x00.")  # a pickle, not safetensors
    with pytest.raises(ValueError, match="run/pytorch_lora_weights.safetensors is not a safetensors file"):
        resolve_model(str(run))
    save_file({"unet.x.lora_A.weight": torch.zeros(1, 1)}, tmp_path / "extra.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.safetensors not found"):
        resolve_model("org/model", loras=[(str(tmp_path / "extra.safetensors"), 1.0),
                                          (str(tmp_path / "missing.safetensors"), 0.5)])

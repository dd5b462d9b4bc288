"""How `generate` and `eval` read a model argument: hub id, pipeline folder, LoRA run or full fine-tuning run."""

from __future__ import annotations

import pytest

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
    (lora / "pytorch_lora_weights.safetensors").write_bytes(b"")
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


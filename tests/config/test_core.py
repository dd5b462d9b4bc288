from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml

from diffalign.config.core import (
    ConfigError,
    Variant,
    apply_overrides,
    cfg_field,
    describe,
    dump_yaml,
    from_dict,
    load_config,
    load_yaml_tree,
    parse_override,
    register_variant,
    to_dict,
    variants,
)


@dataclass
class ModelConfig:
    pretrained: str = cfg_field("runwayml/stable-diffusion-v1-5", "Hub id or local path.")
    revision: str | None = cfg_field(None, "Hub revision.")
    lora_rank: int = cfg_field(4, "LoRA rank.", min=1, max=256)


@dataclass
class TrainConfig:
    max_steps: int = cfg_field(300, "Number of optimizer steps.")
    learning_rate: float = cfg_field(1e-4, "Peak learning rate.")
    optimizer: Literal["adamw", "adafactor"] = cfg_field("adamw", "Optimizer.")
    betas: tuple[float, float] = cfg_field((0.9, 0.999), "AdamW betas.")
    target_modules: list[str] = cfg_field(["to_q", "to_k"], "LoRA targets.")
    gradient_checkpointing: bool = cfg_field(False, "Trade compute for memory.")
    loss_weights: dict[str, float] = cfg_field({}, "Per-term loss weights.")
    seed: Optional[int] = cfg_field(None, "Random seed.")
    precision: str = cfg_field("bf16", "Mixed precision.", choices=["no", "fp16", "bf16"])


@variants("name")
@dataclass
class ObjectiveConfig(Variant):
    name: str = cfg_field("dpo", "Which objective.")


@register_variant(ObjectiveConfig, "dpo")
@dataclass
class DPOConfig(ObjectiveConfig):
    name: str = cfg_field("dpo", "Which objective.")
    beta: float = cfg_field(5000.0, "KL strength.")


@register_variant(ObjectiveConfig, "sft")
@dataclass
class SFTConfig(ObjectiveConfig):
    name: str = cfg_field("sft", "Which objective.")
    use_winner_only: bool = cfg_field(True, "Train on preferred images only.")


@dataclass
class Config:
    model: ModelConfig = cfg_field(ModelConfig, "Base model.")
    train: TrainConfig = cfg_field(TrainConfig, "Optimisation.")
    objective: ObjectiveConfig = cfg_field(ObjectiveConfig, "Training objective.")
    tags: list[str] = cfg_field([], "Free-form tags.")


def errors_of(data, **kw) -> str:
    with pytest.raises(ConfigError) as ei:
        from_dict(Config, data, **kw)
    return str(ei.value)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_and_fresh_mutables():
    a, b = from_dict(Config, {}), Config()
    assert a.train.max_steps == 300 and a.train.betas == (0.9, 0.999)
    assert isinstance(a.objective, DPOConfig) and a.objective.beta == 5000.0
    assert to_dict(a) == to_dict(Config(objective=DPOConfig()))
    a.train.target_modules.append("to_v")
    assert b.train.target_modules == ["to_q", "to_k"] == TrainConfig().target_modules


def test_nested_and_coercions():
    cfg = from_dict(Config, {
        "model": {"revision": "fp16", "lora_rank": 8},
        "train": {"max_steps": 10, "learning_rate": "1e-4", "betas": [0.5, 1], "optimizer": "adafactor",
                  "target_modules": ["a"], "gradient_checkpointing": True, "loss_weights": {"kl": 2},
                  "seed": 3},
    })
    t = cfg.train
    assert cfg.model.revision == "fp16" and cfg.model.lora_rank == 8
    assert cfg.model.pretrained == "runwayml/stable-diffusion-v1-5"
    assert t.learning_rate == pytest.approx(1e-4) and isinstance(t.learning_rate, float)
    assert t.betas == (0.5, 1.0) and isinstance(t.betas, tuple)
    assert t.loss_weights == {"kl": 2.0} and t.seed == 3 and t.gradient_checkpointing is True
    assert from_dict(TrainConfig, {"learning_rate": 3}).learning_rate == 3.0
    assert from_dict(ModelConfig, {"revision": None}).revision is None


def test_yaml_scientific_notation_string():
    raw = yaml.safe_load("learning_rate: 1e-4")
    assert raw["learning_rate"] == "1e-4"  # the PyYAML quirk this guards against
    assert from_dict(TrainConfig, raw).learning_rate == pytest.approx(1e-4)


@pytest.mark.parametrize("field, value, expected", [
    ("max_steps", True, "expected an integer"),
    ("max_steps", 2.0, "expected an integer"),
    ("max_steps", "3", "expected an integer"),
    ("learning_rate", "fast", "expected a number"),
    ("learning_rate", False, "expected a number"),
    ("gradient_checkpointing", "yes", "expected true or false"),
    ("gradient_checkpointing", 1, "expected true or false"),
    ("betas", [0.9], "expected a list of 2 items"),
    ("target_modules", "to_q", "expected a list"),
    ("loss_weights", [1], "expected a mapping"),
    ("seed", "x", "expected an integer"),
])
def test_type_errors(field, value, expected):
    msg = errors_of({"train": {field: value}})
    assert f"train.{field}" in msg and expected in msg and repr(value) in msg


@pytest.mark.parametrize("field, value", [
    ("learning_rate", float("nan")), ("learning_rate", float("inf")), ("learning_rate", "1e999"),
    ("betas", [0.9, float("nan")]), ("loss_weights", {"kl": float("-inf")}),
])
def test_non_finite_numbers_are_refused_naming_the_key(field, value):
    msg = errors_of({"train": {field: value}})
    assert f"train.{field}" in msg and "expected a finite number" in msg


def test_list_item_error_names_index():
    assert "train.target_modules[1]" in errors_of({"train": {"target_modules": ["a", 3]}})


def test_unknown_key_suggestion():
    msg = errors_of({"train": {"lerning_rate": 1.0}}, source="exp.yaml")
    assert "unknown key 'train.lerning_rate'" in msg
    assert "did you mean 'train.learning_rate'?" in msg and "exp.yaml" in msg


def test_unknown_key_lists_valid_keys_when_nothing_close():
    msg = errors_of({"model": {"zzz": 1}})
    assert "unknown key 'model.zzz'" in msg and "pretrained, revision, lora_rank" in msg


def test_all_errors_reported_together():
    with pytest.raises(ConfigError) as ei:
        from_dict(Config, {"train": {"max_steps": "x", "lr": 1}, "modle": {}, "model": {"lora_rank": 0}})
    err = ei.value
    assert len(err.errors) == 4 and str(err).startswith("4 config errors:")
    for needle in ("train.max_steps", "train.lr", "'modle'", "did you mean 'model'", "model.lora_rank"):
        assert needle in str(err)


def test_literal_error():
    msg = errors_of({"train": {"optimizer": "adamw8"}})
    assert "train.optimizer" in msg and "'adamw', 'adafactor'" in msg and "did you mean 'adamw'" in msg


def test_min_max_and_choices_constraints():
    assert "model.lora_rank" in (m := errors_of({"model": {"lora_rank": 0}})) and ">= 1" in m
    assert "<= 256" in errors_of({"model": {"lora_rank": 1000}})
    msg = errors_of({"train": {"precision": "bf61"}})
    assert "train.precision" in msg and "did you mean 'bf16'" in msg


def test_variant_selection():
    cfg = from_dict(Config, {"objective": {"name": "sft", "use_winner_only": False}})
    assert type(cfg.objective) is SFTConfig and cfg.objective.use_winner_only is False
    cfg = from_dict(Config, {"objective": {"beta": 10}})
    assert type(cfg.objective) is DPOConfig and cfg.objective.beta == 10.0
    assert to_dict(cfg)["objective"] == {"name": "dpo", "beta": 10.0}
    assert type(from_dict(ObjectiveConfig, {"name": "sft"})) is SFTConfig


def test_unknown_variant_name():
    msg = errors_of({"objective": {"name": "dop"}})
    assert "objective.name" in msg and "'dpo', 'sft'" in msg and "did you mean 'dpo'" in msg


def test_switch_variant_via_override(tmp_path):
    path = write(tmp_path / "exp.yaml", "objective:\n  name: dpo\n")
    cfg = load_config(Config, path, ["objective.name=sft"])
    assert type(cfg.objective) is SFTConfig  # DPO defaults (beta) do not carry over
    path = write(tmp_path / "exp2.yaml", "objective:\n  beta: 100\n")
    with pytest.raises(ConfigError) as ei:
        load_config(Config, path, ["objective.name=sft"])
    msg = str(ei.value)
    assert "unknown key 'objective.beta'" in msg and "objective.name=dpo" in msg and "exp2.yaml" in msg


def test_switching_variant_drops_lower_layer_keys(tmp_path):
    base = write(tmp_path / "dpo.yaml", "objective:\n  name: dpo\n  beta: 100\n")
    cfg = load_config(Config, base, ["objective.name=sft"])  # the file's beta belonged to dpo
    assert type(cfg.objective) is SFTConfig
    child = write(tmp_path / "sft.yaml", "base: dpo.yaml\nobjective:\n  name: sft\n")
    assert type(load_config(Config, child).objective) is SFTConfig
    same = write(tmp_path / "same.yaml", "base: dpo.yaml\nobjective:\n  name: dpo\n")
    assert load_config(Config, same).objective.beta == 100
    with pytest.raises(ConfigError, match="objective.beta"):
        load_config(Config, base, ["objective.name=sft", "objective.beta=3"])


def test_parse_override():
    assert parse_override("train.max_steps=3") == (["train", "max_steps"], 3)
    assert parse_override("train.target_modules=[a, b]") == (["train", "target_modules"], ["a", "b"])
    assert parse_override("model.revision=null") == (["model", "revision"], None)
    assert parse_override("x=true") == (["x"], True)
    assert parse_override("x.y={a: 1}") == (["x", "y"], {"a": 1})
    assert parse_override("prompt=a cat: photo") == (["prompt"], "a cat: photo")


@pytest.mark.parametrize("bad", ["train.max_steps", "=3", "a..b=1"])
def test_bad_override_syntax(bad):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override(bad)


def test_apply_overrides_creates_and_merges():
    data = {"train": {"max_steps": 1, "betas": [1, 2]}}
    out = apply_overrides(data, ["train.betas=[3, 4]", "model.lora_rank=8", "train={seed: 2}"])
    assert out == {"train": {"max_steps": 1, "betas": [3, 4], "seed": 2}, "model": {"lora_rank": 8}}
    assert data == {"train": {"max_steps": 1, "betas": [1, 2]}}
    with pytest.raises(ConfigError, match="'train.max_steps' is 1"):
        apply_overrides(data, ["train.max_steps.x=1"])


def test_override_unknown_key_says_command_line():
    with pytest.raises(ConfigError) as ei:
        load_config(Config, None, ["train.lerning_rate=3"])
    msg = str(ei.value)
    assert "command line" in msg and "did you mean 'train.learning_rate'" in msg


def test_load_config_with_overrides(tmp_path):
    path = write(tmp_path / "a.yaml", "train:\n  learning_rate: 1e-5\n  max_steps: 5\n")
    cfg = load_config(Config, path, ["train.max_steps=7", "model.revision=null"])
    assert cfg.train.learning_rate == pytest.approx(1e-5) and cfg.train.max_steps == 7


def test_missing_file_and_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found: .*nope.yaml"):
        load_config(Config, tmp_path / "nope.yaml")
    bad = write(tmp_path / "bad.yaml", "train:\n  max_steps: 1\n   x: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+:\d+: YAML syntax error"):
        load_yaml_tree(bad)
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_yaml_tree(write(tmp_path / "list.yaml", "- 1\n"))


def test_base_composition(tmp_path):
    write(tmp_path / "bases/model.yaml", "model:\n  lora_rank: 8\n  revision: fp16\ntags: [a]\n")
    write(tmp_path / "bases/train.yaml",
          "base: model.yaml\ntrain:\n  max_steps: 10\n  target_modules: [x, y]\n")
    exp = write(tmp_path / "exp/run.yaml",
                "base: [../bases/train.yaml]\nmodel:\n  lora_rank: 16\ntrain:\n  target_modules: [z]\n")
    tree = load_yaml_tree(exp)
    assert tree == {"model": {"lora_rank": 16, "revision": "fp16"}, "tags": ["a"],
                    "train": {"max_steps": 10, "target_modules": ["z"]}}
    write(tmp_path / "bases/model.yaml", "model:\n  lora_rnk: 8\n")
    with pytest.raises(ConfigError, match=r"model.yaml: unknown key 'model.lora_rnk'"):
        load_config(Config, exp)


def test_base_cycle(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: [a.yaml]\n")
    with pytest.raises(ConfigError, match="cyclic"):
        load_yaml_tree(tmp_path / "a.yaml")


def test_dump_yaml_round_trip():
    cfg = from_dict(Config, {"objective": {"name": "sft"}, "train": {"learning_rate": 1e-5, "seed": 1},
                             "model": {"pretrained": "a: b"}, "tags": ["x"]})
    text = dump_yaml(cfg)
    assert "# Peak learning rate.\n  learning_rate: 1.0e-05" in text
    assert "# Base model.\nmodel:" in text
    assert from_dict(Config, yaml.safe_load(text)) == cfg
    assert from_dict(Config, yaml.safe_load(dump_yaml(Config()))) == from_dict(Config, {})


def test_describe():
    docs = {d.label: d for d in describe(Config)}
    assert docs["train.learning_rate"].help == "Peak learning rate."
    assert docs["train.betas"].type == "tuple[float, float]" and docs["train.betas"].default == [0.9, 0.999]
    assert docs["train.optimizer"].type == "'adamw' | 'adafactor'"
    assert docs["model.revision"].type == "str | None"
    assert docs["objective.name"].type == "'dpo' | 'sft'" and docs["objective.name"].default == "dpo"
    assert docs["objective.beta (dpo)"].help == "KL strength." and docs["objective.beta (dpo)"].default == 5000.0
    assert docs["objective.use_winner_only (sft)"].variant == "sft"


def test_registration_errors():
    with pytest.raises(TypeError, match="must default to 'ppo'"):
        @register_variant(ObjectiveConfig, "ppo")
        @dataclass
        class PPOConfig(ObjectiveConfig):
            clip: float = cfg_field(0.2, "Clip range.")
    with pytest.raises(TypeError, match="must subclass Variant"):
        @variants("name")
        @dataclass
        class NotAVariant:
            name: str = cfg_field("a", "Name.")

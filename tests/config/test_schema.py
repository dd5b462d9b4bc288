from pathlib import Path

import pytest

from diffalign.config import ConfigError, RunConfig, dump_yaml, from_dict, load_config
from diffalign.config.objectives import DPOConfig, SFTConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_demo_config_is_the_default():
    assert load_config(RunConfig, CONFIGS / "demo" / "dpo.yaml") == RunConfig()


def test_sft_demo_composes_from_dpo():
    cfg = load_config(RunConfig, CONFIGS / "demo" / "sft.yaml")
    assert isinstance(cfg.objective, SFTConfig)
    assert cfg.train.output_dir == "runs/demo-sft" and cfg.train.max_steps == RunConfig().train.max_steps


def test_every_shipped_config_loads():
    files = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name != "accelerate")  # accelerate launch configs
    assert files
    for path in files:
        load_config(RunConfig, path)


def test_overrides_and_errors():
    cfg = load_config(RunConfig, None, ["objective.beta=2000", "train.learning_rate=1e-4", "lora.target_modules=[to_q]"])
    assert isinstance(cfg.objective, DPOConfig) and cfg.objective.beta == 2000.0
    assert cfg.train.learning_rate == 1e-4 and cfg.lora.target_modules == ["to_q"]
    with pytest.raises(ConfigError, match=r"unknown key 'objective.bta'; did you mean 'objective.beta'"):
        load_config(RunConfig, None, ["objective.bta=1"])
    with pytest.raises(ConfigError, match=r"'train.max_steps': expected an integer"):
        load_config(RunConfig, None, ["train.max_steps=many"])
    with pytest.raises(ConfigError, match="beta"):
        load_config(RunConfig, None, ["objective.name=sft", "objective.beta=3"])


def test_yaml_12_scalars_in_overrides():
    cfg = load_config(RunConfig, None, ["train.mixed_precision=no", "train.learning_rate=3e-5", "train.cpu=true"])
    assert cfg.train.mixed_precision == "no" and cfg.train.learning_rate == 3e-5 and cfg.train.cpu is True


def test_dump_round_trip():
    import yaml

    cfg = load_config(RunConfig, None, ["objective.name=sft", "train.mixed_precision=bf16"])
    assert from_dict(RunConfig, yaml.safe_load(dump_yaml(cfg))) == cfg


@pytest.mark.parametrize("override", ["train.learning_rate=.nan", "train.learning_rate=.inf", "train.max_grad_norm=1e999",
                                      "train.adam_beta1=.nan", "objective.beta=.inf"])
def test_non_finite_settings_are_config_errors_naming_the_key(override):
    with pytest.raises(ConfigError, match=rf"command line \({override}\): invalid value for "
                                          rf"'{override.split('=')[0]}': expected a finite number"):
        load_config(RunConfig, None, [override])

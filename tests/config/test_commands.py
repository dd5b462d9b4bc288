"""`--out` of the config commands is the config key it names: train.output_dir, data.cache_dir."""

from __future__ import annotations

import pytest

import diffalign.api
import diffalign.cli.main as cli
from diffalign.config.commands import with_out
from diffalign.config.core import ConfigError


def test_with_out_adds_the_key_and_refuses_a_different_folder():
    assert with_out(["a.b=1"], "train.output_dir", None) == ["a.b=1"]
    assert with_out(["a.b=1"], "train.output_dir", "runs/x") == ["a.b=1", "train.output_dir=runs/x"]
    assert with_out(["train.output_dir=runs/x"], "train.output_dir", "runs/x")[-1] == "train.output_dir=runs/x"
    with pytest.raises(ConfigError, match="--out runs/y and train.output_dir=runs/x name two different folders"):
        with_out(["train.output_dir=runs/x"], "train.output_dir", "runs/y")


class Stop(Exception):
    pass


@pytest.fixture
def seen(monkeypatch) -> dict:
    """What `diffalign train` hands the Python API's train (which stops there)."""
    seen = {}

    def fake_train(path, *overrides):
        seen.update(path=path, overrides=overrides)
        raise Stop

    monkeypatch.setattr(diffalign.api, "train", fake_train)
    return seen


def test_train_out_is_train_output_dir(seen):
    with pytest.raises(Stop):
        cli.main(["train", "configs/demo/dpo.yaml", "train.max_steps=3", "--out", "runs/mine"])
    assert seen == {"path": "configs/demo/dpo.yaml", "overrides": ("train.max_steps=3", "train.output_dir=runs/mine")}


def test_cache_out_is_data_cache_dir(monkeypatch):
    seen = {}
    real = cli.load_config

    def capture(schema, path, overrides):
        seen["config"] = real(schema, path, overrides)
        raise Stop

    monkeypatch.setattr(cli, "load_config", capture)
    with pytest.raises(Stop):
        cli.main(["cache", "configs/demo/dpo.yaml", "--out", "/scratch/cache", "--batch-size", "4"])
    assert seen["config"].data.cache_dir == "/scratch/cache"


def test_out_and_a_different_key_are_refused_in_one_line(capsys):
    assert cli.main(["train", "configs/demo/dpo.yaml", "train.output_dir=runs/a", "--out", "runs/b"]) == 2
    assert ("diffalign train: error: --out runs/b and train.output_dir=runs/a name two different folders"
            in capsys.readouterr().err)


def test_overrides_may_follow_out(seen):
    with pytest.raises(Stop):
        cli.main(["train", "configs/demo/dpo.yaml", "--out", "runs/mine", "train.max_steps=3", "lora.rank=4"])
    assert seen["overrides"] == ("train.max_steps=3", "lora.rank=4", "train.output_dir=runs/mine")

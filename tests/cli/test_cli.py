import json
import subprocess
import sys
from pathlib import Path

import pytest

from diffalign.cli.main import main
from diffalign.config.schema import RunConfig

ROOT = Path(__file__).resolve().parents[2]


def test_config_show_prints_resolved_yaml_with_help(capsys):
    assert main(["config", "show", str(ROOT / "configs/demo/dpo.yaml"), "objective.beta=2000"]) == 0
    out = capsys.readouterr().out
    assert "beta: 2000.0" in out and "# KL strength beta" in out


def test_config_keys_lists_every_key(capsys):
    assert main(["config", "keys"]) == 0
    out = capsys.readouterr().out
    assert "objective.beta (dpo)" in out and "train.learning_rate" in out and "lora.rank" in out


def test_bad_key_is_a_clear_error(capsys):
    assert main(["train", "train.lerning_rate=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'train.lerning_rate'; did you mean 'train.learning_rate'?" in err


def test_missing_config_file(capsys):
    assert main(["config", "show", "no/such.yaml"]) == 2
    assert "no/such.yaml" in capsys.readouterr().err


def test_help_of_every_subcommand(capsys):
    out = subprocess.run(  # the module entry point, once
        [sys.executable, "-m", "diffalign.cli.main", "train", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "usage: diffalign train" in out
    for command in ("config", "generate", "eval", "grid"):
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0 and f"usage: diffalign {command}" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_train_and_eval_end_to_end(tmp_path, capsys):
    run = tmp_path / "demo"
    assert main(["train", f"train.output_dir={run}", "train.max_steps=3", "train.log_every=1"]) == 0
    out = capsys.readouterr().out
    b = RunConfig().train.batch_size
    assert f"effective batch: {b} pairs/device x 1 accumulation x 1 process(es) = {b} pairs" in out
    assert (run / "pytorch_lora_weights.safetensors").exists()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle on a blue background\na small green square on a white background\n")
    assert main(["eval", str(run), "--prompts", str(prompts), "--seeds", "2", "--steps", "4", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"report: {run / 'eval' / 'report.html'}" in out
    results = json.loads((run / "eval" / "results.json").read_text())
    c = results["comparisons"]["shapes"]["tuned"]
    assert c["wins"] + c["ties"] + c["losses"] == results["pairs"] == 4
    assert results["models"][0]["model"] == "assets/tiny-sd"  # the run's base, from its config.yaml
    assert len(list((run / "eval" / "images" / "tuned").glob("*.png"))) == 4


@pytest.mark.slow
def test_cache_then_train_uses_the_cache(tmp_path, capsys):
    common = [f"data.cache_dir={tmp_path / 'cache'}", "data.max_pairs=8"]
    assert main(["cache", *common, "--shard-size", "4"]) == 0
    assert "cache ready" in capsys.readouterr().out
    run = tmp_path / "run"
    assert main(["train", *common, "data.cache=require", f"train.output_dir={run}", "train.max_steps=1",
                 "train.batch_size=4", "train.trackers=[]"]) == 0
    assert "no VAE or text encoder loaded" in capsys.readouterr().out
    assert (run / "pytorch_lora_weights.safetensors").exists()

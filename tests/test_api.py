"""The Python API (`diffalign.train`, `evaluate`, `score`, `load_config`): what each returns, the forms its
settings take, the errors it raises (the command line's own), and the example that runs them all."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import diffalign
from diffalign.api import EvalResult, TrainResult, eval_job
from diffalign.cli.main import main
from diffalign.config.core import ConfigError
from diffalign.config.schema import RunConfig
from diffalign.synthetic.domain import parse_caption
from diffalign.synthetic.render import render

ROOT = Path(__file__).resolve().parents[1]
CAPTION = "a red circle on a blue background"


def _example():
    spec = importlib.util.spec_from_file_location("python_api_example", ROOT / "examples" / "python_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    """examples/python_api.py run once, on a tiny budget: its output folder and what it returned."""
    out = tmp_path_factory.mktemp("python-api")
    return out, _example().main([str(out), "--steps", "2", "--sampling-steps", "1"])


def test_import_diffalign_exposes_the_api_without_loading_torch():
    code = ("import sys, diffalign\n"
            "assert 'torch' not in sys.modules\n"
            "from diffalign import load_config, train, evaluate, score\n"
            "assert 'torch' not in sys.modules, 'the API module must load torch only when called'\n"
            "print(train.__module__, sorted(n for n in dir(diffalign) if not n.startswith('_')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == "diffalign.api ['EvalResult', 'TrainResult', 'evaluate', 'load_config', 'score', 'train']\n"
    with pytest.raises(AttributeError, match="module 'diffalign' has no attribute 'trian'"):
        diffalign.trian  # noqa: B018


def test_load_config_takes_keywords_mappings_strings_and_a_config():
    cfg = diffalign.load_config(train__max_steps=7, objective__beta=100.5, train__output_dir=Path("out/x"))
    assert isinstance(cfg, RunConfig)
    assert (cfg.train.max_steps, cfg.objective.beta, cfg.train.output_dir) == (7, 100.5, "out/x")
    again = diffalign.load_config(cfg, {"train.max_steps": 9}, "train.log_every=3", data__max_pairs=None)
    assert (again.train.max_steps, again.train.log_every, again.objective.beta) == (9, 3, 100.5)
    from_file = diffalign.load_config(ROOT / "configs/demo/dpo.yaml", objective__beta=2000)
    assert from_file.objective.beta == 2000 and from_file.train.max_steps == RunConfig().train.max_steps
    assert diffalign.load_config(train__trackers=[]).train.trackers == []


def test_a_bad_setting_gets_the_command_line_message(capsys):
    with pytest.raises(ConfigError) as raised:
        diffalign.load_config(train__lerning_rate=1)
    assert "unknown key 'train.lerning_rate'; did you mean 'train.learning_rate'?" in str(raised.value)
    assert main(["train", "train.lerning_rate=1"]) == 2
    assert f"diffalign train: error: {raised.value}\n" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="invalid value for 'train.max_steps': expected an integer, got 'many'"):
        diffalign.train(train__max_steps="many")  # refused before anything is loaded or written
    with pytest.raises(ConfigError, match="config file not found: no/such.yaml"):
        diffalign.load_config("no/such.yaml")
    with pytest.raises(ConfigError, match=r"override 5: give 'key=value' strings, a mapping of dotted keys"):
        diffalign.load_config(None, 5)


def test_the_example_trains_evaluates_and_scores(example_run):
    out, got = example_run
    run, result, scores = got["run"], got["eval"], got["scores"]
    assert isinstance(run, TrainResult) and run.folder == out / "run" and run.weights.is_file()
    logged = [json.loads(line) for line in (run.folder / "metrics.jsonl").read_text().splitlines()]
    assert run.history == logged and run.metrics == logged[-1] and run.metrics["step"] == 2
    assert isinstance(result, EvalResult) and result.folder == run.folder / "eval"
    assert result.results == json.loads((result.folder / "results.json").read_text())
    assert result.results["pairs"] == 4  # 2 prompts x 2 seeds
    assert len(scores) == 2 and all(isinstance(value, float) for value in scores)


def test_the_cli_trains_through_the_api(monkeypatch, tmp_path, capsys):
    calls = []

    def fake_train(config=None, *overrides, **settings):
        calls.append((config, overrides, settings))
        return TrainResult(tmp_path, tmp_path / "w.safetensors", tmp_path / "config.yaml", {})

    monkeypatch.setattr("diffalign.api.train", fake_train)
    assert main(["train", "configs/demo/dpo.yaml", "train.max_steps=3"]) == 0
    assert calls == [("configs/demo/dpo.yaml", ("train.max_steps=3",), {})]
    assert f"done: weights in {tmp_path / 'w.safetensors'}; evaluate with `diffalign eval {tmp_path}`" in capsys.readouterr().out


def test_eval_job_names_models_and_reads_options_as_the_cli_does(example_run, tmp_path):
    run = example_run[1]["run"].folder
    job = eval_job({"a": run, "b": f"{run}@0.5"}, prompts="demo", max_prompts=1, seeds="0,4", scorers="shapes",
                   scorer_options={"shapes": {}}, out=tmp_path / "e")
    assert [m.name for m in job.tuned] == ["a", "b"] and job.base.name == "base"
    assert (job.seeds, len(job.prompts.prompts), job.out) == ([0, 4], 1, tmp_path / "e")
    assert eval_job(run, seeds=2).out == run / "eval"  # a run's eval folder, as `diffalign eval RUN`


def test_eval_job_names_an_unknown_option_before_loading_anything(tmp_path):
    with pytest.raises(ValueError, match="eval_job: unknown option 'resample'; did you mean 'resamples'. options: "
                       "prompts, .*, tie_tolerance, resamples, grid_prompts, grid_seeds, out$"):
        eval_job(tmp_path / "not-a-run", resample=10)


def test_evaluate_refuses_with_the_cli_messages(example_run, tmp_path):
    run = example_run[1]["run"].folder
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nope'} does not exist: `eval` takes a `diffalign "
                       "train` run"):
        diffalign.evaluate(tmp_path / "nope")
    with pytest.raises(ValueError, match="--seeds '0': give at least one seed"):
        diffalign.evaluate(run, seeds=0)
    with pytest.raises(ValueError, match=r"seeds \[\]: expected a non-empty list of integers"):
        diffalign.evaluate(run, seeds=[])
    with pytest.raises(KeyError, match="shapez"):
        diffalign.evaluate(run, scorers=["shapez"])
    with pytest.raises(ValueError, match=r"scorer_options for pickscore: not a chosen scorer \(shapes\)"):
        diffalign.evaluate(run, scorer_options={"pickscore": {"model": "x"}})
    with pytest.raises(ValueError, match="evaluate: unknown option 'stepz'; did you mean 'steps'. options: "
                       "prompts, max_prompts, seeds, sampler, steps, .*, scorers, scorer_options, .*, out$"):
        diffalign.evaluate(run, stepz=1)
    with pytest.raises(ValueError, match="--sampler 'fast': expected one of default, ddim"):
        diffalign.evaluate(run, sampler="fast")
    assert not (tmp_path / "nope").exists() and not list(run.glob("eval/images/*/p*-s9.png"))


def test_score_takes_images_arrays_and_paths_and_matches_the_cli(tmp_path, capsys):
    array, _ = render(parse_caption(CAPTION), random.Random(0))
    Image.fromarray(array).save(tmp_path / "a.png")
    images = [Image.fromarray(array), array, array.astype(np.float32) / 255, tmp_path / "a.png", str(tmp_path / "a.png")]
    scores = diffalign.score(images, CAPTION, scorer="shapes")
    assert len(scores) == 5 and all(isinstance(s, float) for s in scores)
    assert scores[0] == scores[1] == scores[3] == scores[4] and scores[2] == pytest.approx(scores[0], abs=1e-3)
    assert main(["score", str(tmp_path / "a.png"), "--prompt", CAPTION, "--scorer", "shapes", "--no-progress",
                 "--out", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["rows"][0]["shapes"] == scores[0]
    other = diffalign.score([array, array], [CAPTION, "a small green square on a white background"])
    assert other[0] == scores[0] and other[1] != other[0]
    assert diffalign.score([], []) == []


def test_score_names_the_bad_input(tmp_path):
    array, _ = render(parse_caption(CAPTION), random.Random(0))
    with pytest.raises(ValueError, match="2 images but 1 prompts: give one prompt per image, or one string for all"):
        diffalign.score([array, array], [CAPTION])
    with pytest.raises(ValueError, match=r"image 1: an array of shape \(32, 32, 5\); expected HxW or HxWxC"):
        diffalign.score([array, np.zeros((32, 32, 5), np.uint8)], CAPTION)
    with pytest.raises(ValueError, match="image 0: a float64 array; give uint8 .0-255. or floats in .0, 1."):
        diffalign.score([array * 2.0], CAPTION)
    with pytest.raises(ValueError, match="image 0: a dict; give PIL images, HxWxC arrays or image paths"):
        diffalign.score([{}], CAPTION)
    with pytest.raises(FileNotFoundError, match=f"image 0 .{tmp_path / 'gone.png'}.: no such file"):
        diffalign.score([tmp_path / "gone.png"], CAPTION)
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ValueError, match=f"1 of 2 images could not be scored; {tmp_path / 'bad.png'}: cannot read"):
        diffalign.score([array, tmp_path / "bad.png"], CAPTION)
    with pytest.raises(KeyError, match="unknown scorer 'shapez'; did you mean 'shapes'"):
        diffalign.score([array], CAPTION, scorer="shapez")
    with pytest.raises(ValueError, match="scorer 'shapes' has no option 'bogus'"):
        diffalign.score([array], CAPTION, bogus=1)

"""The model card of a run folder: written at the final save, parsed as a Hugging Face card, and given (then
replaced, not appended to) an evaluation section by `diffalign eval` on the run."""

from __future__ import annotations

import pytest
from huggingface_hub import ModelCard

from diffalign.config.core import load_config
from diffalign.config.schema import RunConfig
from diffalign.evaluation.evaluate import EvalJob, run_eval
from diffalign.evaluation.generation import SamplingSettings
from diffalign.evaluation.model_specs import ModelSpec, resolve_model
from diffalign.evaluation.prompt_sets import Prompt, PromptSet
from diffalign.models.model_card import (
    EVAL_START,
    TrainingFacts,
    base_license,
    command_line,
    run_folder_of,
    update_run_cards,
    write_training_card,
)
from diffalign.training.loop import train

from ..conftest import DEMO_MODEL


def _cfg(out, *overrides, model=DEMO_MODEL, pairs=None) -> RunConfig:
    data = [f"data.path={pairs}"] if pairs else []
    return load_config(RunConfig, None, [
        f"model.pretrained={model}", f"train.output_dir={out}", "train.max_steps=2", "train.batch_size=2",
        "train.grad_accum=2", "data.max_pairs=4", "train.warmup_steps=0", "objective.beta=500", *data, *overrides])


@pytest.fixture(scope="module")
def base(tiny_models):
    return str(tiny_models["sd15"])


@pytest.fixture(scope="module")
def tiny_run(base, pair_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("card") / "run"
    train(_cfg(out, model=base, pairs=pair_file))
    return out


def test_the_card_of_a_tiny_run_parses_and_names_its_method_settings_and_steps(tiny_run, base):
    card = ModelCard.load(tiny_run / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == base and data["library_name"] == "diffusers"
    assert data["tags"] == ["diffalign", "lora", "stable-diffusion", "text-to-image", "dpo"]
    assert "license" not in data  # the tiny model's card names none
    text = card.text
    assert "Diffusion-DPO (`objective.name=dpo`)" in text
    assert "| objective.beta | 500.0 |" in text and "| lora | rank 8, alpha 8," in text
    assert "2 pairs/process x 2 accumulation x 1 process(es) = 4 pairs per optimizer step" in text
    assert "- steps: 2 of train.max_steps=2" in text and "8 pairs seen in 2 optimizer steps" in text
    assert "4 decided pairs" in text and "(cpu)" in text and "- wall time: " in text
    assert f"pipe.load_lora_weights({str(tiny_run)!r}" in text
    assert f"diffalign train {tiny_run / 'config.yaml'}" in text and EVAL_START not in text


def _eval(run, base, out, seeds, tie_tolerance=0.0):
    prompts = PromptSet("two", "test", [Prompt("a red circle on a blue background"),
                                        Prompt("a small green square on a white background")])
    job = EvalJob(base=ModelSpec("base", base), tuned=[resolve_model(str(run))], prompts=prompts,
                  seeds=seeds, sampling=SamplingSettings(steps=2, size=32, dtype="float32"), scorers=["shapes"],
                  resamples=50, device="cpu", grid_prompts=1, grid_seeds=1, out=out, progress=False,
                  tie_tolerance=tie_tolerance)
    return run_eval(job)


def test_an_eval_on_the_run_adds_its_evaluation_and_a_second_eval_replaces_it(tiny_run, base, tmp_path):
    results = _eval(tiny_run, base, tmp_path / "first", [0])
    text = (tiny_run / "README.md").read_text()
    c = results["comparisons"]["shapes"]["run"]
    win = f"{100 * c['win_rate']['value']:.1f} %"
    assert text.count("## Evaluation") == 1 and f"| shapes | {win} [" in text
    assert f"{c['wins']} / {c['ties']} / {c['losses']}" in text and "prompt set `two` (2 prompts x seeds 0 = 2" in text
    assert str(tmp_path / "first" / "results.json") in text
    assert ModelCard.load(tiny_run / "README.md").data.base_model == base  # front matter intact

    _eval(tiny_run, base, tmp_path / "first", [0], tie_tolerance=2.0)  # the same images, scored again
    again = (tiny_run / "README.md").read_text()
    assert again.count("## Evaluation") == 1 and again.count(EVAL_START) == 1
    assert "(ties within 2)" in again and "| shapes | 0.0 % [" in again and "| 0 / 2 / 0 |" in again
    assert again.split(EVAL_START)[0] == text.split(EVAL_START)[0]  # the training part is kept as it was


def test_rewriting_the_card_drops_the_evaluation_of_earlier_weights(tmp_path):
    facts = TrainingFacts(_cfg(tmp_path), "sdxl", 3, 2, "NVIDIA H100 (cuda)", 61.0, "data x: 4 pairs",
                          resumed_from="step-00000002")
    write_training_card(tmp_path, facts)
    results = {"models": [{"name": "base", "model": "b", "unet": None, "loras": []},
                          {"name": "run", "model": "b", "unet": None, "loras": [{"path": str(tmp_path), "scale": 1.0}]}],
               "settings": {"prompt_set": "p", "prompts": 1, "seeds": [0], "sampler": "ddim", "steps": 2,
                            "guidance": 5.0, "width": 32, "height": 32, "tie_tolerance": 0.0},
               "pairs": 1, "comparisons": {"shapes": {"run": {
                   "wins": 1, "ties": 0, "losses": 0, "win_rate": {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0},
                   "mean_difference": {"value": 0.25, "ci_low": None, "ci_high": None}}}}}
    assert update_run_cards(results, tmp_path / "eval") == [tmp_path / "README.md"]
    text = (tmp_path / "README.md").read_text()
    assert "| shapes | 100.0 % [100.0 %, 100.0 %] | 1 / 0 / 0 | +0.25 [n/a, n/a] |" in text
    assert "stable-diffusion-xl" in text and "2 process(es) on NVIDIA H100 (cuda)" in text
    assert "61 s (this session, resumed from step-00000002)" in text
    write_training_card(tmp_path, facts)  # a resumed run's final save: other weights, no evaluation yet
    assert EVAL_START not in (tmp_path / "README.md").read_text()


def test_eval_leaves_folders_without_a_diffalign_card_and_other_models_alone(tmp_path, capsys):
    own = tmp_path / "README.md"
    own.write_text("---\ntags: [mine]\n---\n# my notes\n")
    models = [{"name": "base", "model": "b", "unet": None, "loras": []},
              {"name": "mine", "model": "b", "unet": None, "loras": [{"path": str(tmp_path), "scale": 1.0}]}]
    assert update_run_cards({"models": models}, tmp_path / "eval") == []
    assert own.read_text() == "---\ntags: [mine]\n---\n# my notes\n"
    own.write_text("---\ntags: [diffalign\n---\n# edited by hand\n")  # front matter broken: warned, kept
    assert update_run_cards({"models": models}, tmp_path / "eval") == []
    assert own.read_text() == "---\ntags: [diffalign\n---\n# edited by hand\n"
    assert capsys.readouterr().err == (
        f"warning: {own}: its front matter is not valid YAML (while parsing a flow sequence); the evaluation was "
        "not added to it: fix it and rerun this eval (its images are reused)\n")
    assert run_folder_of({"unet": str(tmp_path / "unet"), "loras": []}) == tmp_path
    assert run_folder_of({"unet": None, "loras": [{"path": "run", "scale": 0.5}]}) is None  # not the run as trained
    assert run_folder_of({"unet": None, "loras": [{"path": "a", "scale": 1.0}, {"path": "b", "scale": 1.0}]}) is None
    assert run_folder_of({"unet": None, "loras": []}) is None


def test_the_base_models_license_is_read_from_its_own_card_without_a_download(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: openrail++\n---\n# base\n")
    assert base_license(str(tmp_path)) == "openrail++"
    assert base_license(str(tmp_path / "missing-folder")) is None  # neither a folder nor a hub id
    assert base_license("nobody/not-in-the-cache") is None


def test_the_command_names_the_diffalign_entry_point():
    assert command_line(["/venv/bin/diffalign", "train", "a b.yaml"]) == "diffalign train 'a b.yaml'"
    assert command_line(["/x/diffalign/cli/main.py", "train", "c.yaml"]) == "diffalign train c.yaml"
    assert command_line(["notebook.py", "x"]) == "python notebook.py x"

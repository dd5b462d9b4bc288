"""`run_eval` end to end on the tiny model: generation, scores, statistics, report files, resume."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil

import pytest

from diffalign.evaluation.evaluate import EvalJob, criterion_means, run_eval
from diffalign.evaluation.generation import SamplingSettings, image_name
from diffalign.evaluation.model_specs import ModelSpec
from diffalign.evaluation.prompt_sets import Prompt, PromptSet

from .process_doubles import main_of_two


def test_criterion_means_cover_criteria_that_only_some_prompts_name():
    per_image = [
        {"colour": 1.0, "shape": 0.5, "reward": 0.75},
        {"colour": 0.0, "shape": 1.0, "size": 0.2, "reward": 0.4},
        {"colour": 0.5, "shape": 0.0, "size": 0.6, "reward": 0.3},
    ]
    means = criterion_means(per_image)
    assert list(means) == ["colour", "shape", "reward", "size"]
    assert means["colour"] == pytest.approx(0.5)
    assert means["size"] == pytest.approx(0.4)  # over the two images whose prompt names a size
    assert means["reward"] == pytest.approx(1.45 / 3)


@pytest.fixture(scope="module")
def lora_dir(tiny_models, make_lora, tmp_path_factory):
    return make_lora(tiny_models["sd15"], tmp_path_factory.mktemp("lora"), 0.1)


def test_eval_writes_results_report_and_resumes(tiny_models, lora_dir, tmp_path, monkeypatch):
    base = str(tiny_models["sd15"])
    prompts = PromptSet("test", "test", [
        Prompt("a red circle on a blue background", "circle"),
        Prompt("a small green square on a white background", "square"),
        Prompt("a large blue circle on a yellow background", "circle"),
    ])
    job = EvalJob(
        base=ModelSpec("base", base), tuned=[ModelSpec("tuned", base, None, [(str(lora_dir), 1.0)]),
                                             ModelSpec("half", base, None, [(str(lora_dir), 0.5)])],
        prompts=prompts, seeds=[0, 1], sampling=SamplingSettings(steps=2, size=32, dtype="float32"),
        scorers=["shapes"], resamples=200, device="cpu", grid_prompts=2, grid_seeds=1, out=tmp_path / "eval",
        progress=False,
    )
    results = run_eval(job)
    out = tmp_path / "eval"
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["pairs"] == 6 and on_disk["settings"]["seeds"] == [0, 1]
    assert [m["name"] for m in on_disk["models"]] == ["base", "tuned", "half"]
    comparison = on_disk["comparisons"]["shapes"]["tuned"]
    assert comparison["wins"] + comparison["ties"] + comparison["losses"] == 6
    assert set(on_disk["categories"]["shapes"]) == {"circle", "square"}
    assert on_disk["categories"]["shapes"]["circle"]["n"] == 4
    assert set(on_disk["criteria"]["shapes"]["base"]) >= {"colour", "shape", "reward"}
    for entry in (*on_disk["grids"], *on_disk["plots"]):
        assert (out / entry["file"]).is_file()
    assert on_disk["grids"][0]["models"] == ["base", "tuned", "half"]
    for name in ("summary.md", "report.html", "scores.csv"):
        assert (out / name).is_file()
    assert on_disk["grids"][0]["seeds"] == [0]
    page = (out / "report.html").read_text()  # its samples: every seed, not only the grids' one, each image scored
    for k, seed in enumerate([0, 1]):
        assert f'id="seed-panel-{k}" data-seed="{seed}"' in page
        for model in ("base", "tuned", "half"):
            for prompt in on_disk["grids"][0]["prompts"]:
                assert f'src="images/{model}/{image_name(prompt, seed)}"' in page
    assert page.count('<span class="score">shapes ') == 2 * 2 * 3
    with (out / "scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {"base/shapes", "tuned/shapes", "half/shapes", "category"} <= set(rows[0])
    mean = sum(float(r["tuned/shapes"]) for r in rows) / 6
    assert results["scores"]["shapes"]["tuned"]["mean"] == pytest.approx(mean, abs=1e-5)

    # a rerun reuses every image: generation must not load a pipeline again
    import diffalign.sampling.generate as generate

    def no_loading(*args, **kwargs):
        raise AssertionError("the rerun should not generate")

    monkeypatch.setattr(generate, "load_pipeline", no_loading)
    again = run_eval(job)
    assert again["comparisons"] == results["comparisons"]


def test_eval_refuses_duplicate_names_and_no_tuned_model(tiny_models, tmp_path):
    base = ModelSpec("base", str(tiny_models["sd15"]))
    prompts = PromptSet("t", "t", [Prompt("a red circle")])
    with pytest.raises(ValueError, match="base is used twice"):
        run_eval(EvalJob(base=base, tuned=[ModelSpec("base", "x")], prompts=prompts, out=tmp_path))
    with pytest.raises(ValueError, match="at least one tuned model"):
        run_eval(EvalJob(base=base, tuned=[], prompts=prompts, out=tmp_path))


def test_an_eval_stopped_while_scoring_rescores_only_the_missing_chunks(tiny_models, lora_dir, tmp_path,
                                                                           monkeypatch):
    import diffalign.evaluation.evaluate as evaluate

    base = str(tiny_models["sd15"])
    prompts = PromptSet("test", "test", [Prompt("a red circle on a blue background"),
                                         Prompt("a small green square on a white background"),
                                         Prompt("a large blue circle on a yellow background")])
    out = tmp_path / "eval"
    job = EvalJob(base=ModelSpec("base", base), tuned=[ModelSpec("tuned", base, None, [(str(lora_dir), 1.0)])],
                  prompts=prompts, seeds=[0, 1], sampling=SamplingSettings(steps=2, size=32, dtype="float32"),
                  resamples=50, batch_size=2, device="cpu", grid_prompts=1, out=out, progress=False)
    run_eval(job)
    first = {name: (out / name).read_bytes() for name in ("results.json", "scores.csv", "summary.md", "report.html")}
    assert not (out / ".scores").exists()  # the records go once results.json is written

    # the main process of 2 scores chunks 0 and 2 (images 0-1 and 4-5 of each model); process 1's chunk is missing
    two = main_of_two([(out / "images" / "base", "generate"), (out / "images" / "tuned", "generate"), (out, "score")])
    with pytest.raises(ValueError) as missing:
        run_eval(job, two)
    assert str(missing.value).startswith(
        f"{out / '.scores'}: no record of the shapes scores of images 2-3 (chunk 1 of 3, the share of process 1 of "
        "2): it was not computed (rerun the same command to compute it)")

    other = dataclasses.replace(job, scorer_options={"shapes": {"batch_size": 4}}, out=tmp_path / "other")
    (tmp_path / "other").mkdir()
    shutil.copytree(out / ".scores", tmp_path / "other" / ".scores")  # before any image is drawn
    with pytest.raises(ValueError) as changed:
        run_eval(other)
    assert not (tmp_path / "other" / "images").exists()
    assert str(changed.value) == (
        f"{other.out / '.scores'} holds the scores of an unfinished eval with scorer_options={{'shapes': {{}}}}, not "
        f"{{'shapes': {{'batch_size': 4}}}}: rerun that eval to finish it, or delete {other.out / '.scores'} to score "
        "afresh"
    )

    scored = []
    score_folder = evaluate.score_folder
    monkeypatch.setattr(evaluate, "score_folder", lambda scorer, folder, keys, texts: (
        scored.append((folder.name, list(keys))) or score_folder(scorer, folder, keys, texts)))
    run_eval(job)
    assert scored == [("base", [(1, 0), (1, 1)]), ("tuned", [(1, 0), (1, 1)])]  # chunk 1 only
    assert {name: (out / name).read_bytes() for name in first} == first

    foreign = out / ".scores" / "chunk-000000.json"  # another eval writing into the same folder
    foreign.parent.mkdir()
    foreign.write_text(json.dumps({"fingerprint": "0123456789abcdef", "chunk": 0, "scores": {}}))
    with pytest.raises(ValueError) as refused:
        run_eval(job)
    assert str(refused.value).startswith(
        f"{foreign}: a foreign chunk record, written by a job with other settings (fingerprint 0123456789abcdef, "
        "this job's ")
    assert str(refused.value).endswith(f"use another output, or delete {out / '.scores'} to start over")

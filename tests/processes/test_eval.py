"""`diffalign eval` on 2 processes: the images, scores.csv, results.json and report one process writes; a
process failing while scoring fails the eval in both, and the same command then scores only what is missing."""

from __future__ import annotations

import json

import pytest

from .launch import ROOT, Job, register
from .single import folder_files, one_process

BASE = ROOT / "assets" / "tiny-sd"
# 4 prompts x 2 seeds in batches of 2, for 2 models and 1 scorer: 4 generation batches per model and 4 scoring
# chunks, process 1 taking batches and chunks 1 and 3
SETTINGS = ["--base", str(BASE), "--max-prompts", "4", "--seeds", "2", "--steps", "2", "--batch-size", "2",
            "--resamples", "50", "--grid-prompts", "2", "--no-progress"]


def write_lora(folder):
    """A rank-4 LoRA on the tiny model's UNet, every weight moved by 0.05 (the tuned model)."""
    import torch

    from diffalign.config.schema import LoraConfig, ModelConfig
    from diffalign.models.loading import load_parts
    from diffalign.models.lora import attach_lora, save_lora

    unet = load_parts(ModelConfig(pretrained=str(BASE))).unet
    with torch.no_grad():
        for p in attach_lora(unet, LoraConfig(rank=4, alpha=4)):
            p.add_(0.05)
    save_lora(unet, folder, "sd")
    return folder


def argv(folder, out: str) -> list[str]:
    return ["eval", f"tuned={folder / 'lora'}", *SETTINGS, "--out", str(folder / out)]


PICKY = """
def picky(images, prompts):
    if any(prompt == {text!r} for prompt in prompts):
        raise ValueError("cannot judge this prompt")
    return [0.5 for _ in images]
"""


def build(folder):
    from diffalign.evaluation.prompt_sets import load_prompt_set

    write_lora(folder / "lora")
    # a scorer that fails on the images of prompt 1: scoring chunk 1, process 1's
    (folder / "picky.py").write_text(PICKY.format(text=load_prompt_set("demo", limit=4).prompts[1].text))
    return [
        Job("eval-two", argv(folder, "two")),
        # process 1 records its 4 generation batches and its first scoring chunk, then fails before its second
        Job("eval-raise", argv(folder, "raised"), {"process": 1, "after": 5, "how": "raise"}),
        Job("eval-rerun", argv(folder, "raised")),
        # the images of eval-rerun, scored by the picky scorer
        Job("eval-unscorable", [*argv(folder, "raised"), "--scorer", f"{folder / 'picky.py'}:picky"]),
    ]


register("eval", build)


@pytest.fixture(scope="module")
def one(launched, tmp_path_factory):
    """What one process writes, from the same LoRA."""
    folder = launched.folders["eval"]
    out = tmp_path_factory.mktemp("eval-one")
    assert one_process(argv(folder, str(out / "one"))) == 0
    return out / "one"


def test_two_processes_write_what_one_process_writes(launched, one):
    main = launched.main
    assert main.rc("eval-two") == [0, 0], main.describe("eval-two")
    assert main.records("eval-two") == [6, 6]  # 2 batches of each model and 2 scoring chunks each
    two = launched.folders["eval"] / "two"
    files = folder_files(two)
    assert files == folder_files(one)  # images, metadata, scores.csv, results.json, summary, report, grids, plots
    results = json.loads(files["results.json"])
    assert results["pairs"] == 8 and results["settings"]["device"] == "cpu"
    assert not (two / ".scores").exists()
    assert "report:" in (main.folder / "eval-two.0.out").read_text()
    assert (main.folder / "eval-two.1.out").read_text() == ""  # the report is the main process's


def test_a_process_failing_while_scoring_fails_the_eval_and_the_rerun_scores_only_the_missing_chunk(launched, one):
    main = launched.main
    assert main.rc("eval-raise") == [2, 1], main.describe("eval-raise")  # process 1: the traceback of a bug
    assert "RuntimeError: injected fault" in main.err("eval-raise", 1)
    assert ("diffalign eval: error: process 1 of 2 failed: RuntimeError: injected fault: this process fails before "
            "recording its chunk (what the processes finished is kept: once the cause is fixed, the same command "
            "resumes)"
            in main.err("eval-raise", 0))
    assert main.records("eval-raise") == [6, 5]
    assert main.rc("eval-rerun") == [0, 0], main.describe("eval-rerun")
    assert main.records("eval-rerun") == [0, 1]  # no image drawn again; scoring chunk 3 only
    assert folder_files(launched.folders["eval"] / "raised") == folder_files(one)


def test_an_image_another_process_cannot_score_fails_the_eval_naming_it(launched):
    main = launched.main
    assert main.rc("eval-unscorable") == [2, 2], main.describe("eval-unscorable")
    image = launched.folders["eval"] / "raised" / "images" / "base" / "p00001-s0.png"
    why = f"{image}: {launched.folders['eval'] / 'picky.py'}:picky: cannot judge this prompt (and 1 more image(s))"
    assert f"diffalign eval: error: {why}\n" in main.err("eval-unscorable", 1)
    main_err = main.err("eval-unscorable", 0)
    assert f"diffalign eval: error: process 1 of 2 failed: ValueError: {why} (what the processes" in main_err
    assert "report:" not in (main.folder / "eval-unscorable.0.out").read_text()

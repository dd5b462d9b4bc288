"""The HTML report opened in headless Chromium: every image loads, no console errors, a screenshot is kept."""

import csv
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffalign.evaluation.report import write_report
from diffalign.evaluation.stats import bootstrap_mean, compare_paired

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]


def _browser():
    spec = importlib.util.spec_from_file_location("diffalign_test_browser", HERE / "browser.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def artifact_dir() -> Path:
    """Where test artefacts go: $DIFFALIGN_ARTIFACTS, else <repo root>/.artifacts."""
    return Path(os.environ.get("DIFFALIGN_ARTIFACTS") or REPO_ROOT / ".artifacts")


def _eval_folder(root: Path) -> dict:
    """A small eval output: scores.csv of 3 models × 8 prompts × 2 seeds, two grids, results from real stats."""
    rng = np.random.default_rng(0)
    models, categories = ["base", "tuned", "tuned-b"], ["circle", "square <b>"]
    prompt_index, seeds = np.repeat(np.arange(8), 2), np.tile([0, 1], 8)
    scores = {"base": rng.random(16)}
    scores["tuned"] = np.clip(scores["base"] + rng.normal(0.08, 0.15, 16), 0, 1)
    scores["tuned-b"] = np.clip(scores["base"] + rng.normal(-0.02, 0.1, 16), 0, 1)
    category = [categories[p % 2] for p in prompt_index]
    with open(root / "scores.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "prompt_index", "prompt", "category", "seed"] + [f"{m}/shapes" for m in models])
        for i in range(16):
            writer.writerow([i, prompt_index[i], f"a {category[i]} <i>#{prompt_index[i]}</i>", category[i], seeds[i]]
                            + [f"{scores[m][i]:.4f}" for m in models])
    (root / "grids").mkdir()
    for k, colour in enumerate(["red", "navy"], start=1):
        Image.new("RGB", (3 * 32, 4 * 32), colour).save(root / "grids" / f"grid-0{k}.png")
    per_category = {}
    for name in categories:
        mask = np.array([c == name for c in category])
        per_category[name] = {
            "n": int(mask.sum()), "prompts": len(set(prompt_index[mask])),
            "scores": {m: bootstrap_mean(scores[m][mask], prompt_index[mask], 200, 0) for m in models},
            "comparisons": {t: compare_paired(scores[t][mask], scores["base"][mask], prompt_index[mask], resamples=200).as_dict()
                            for t in models[1:]},
        }
    return {
        "diffalign_version": "0.1.0",
        "settings": {"prompt_set": "demo", "prompt_source": "hand-made", "prompts": 8, "seeds": [0, 1], "sampler": "ddim",
                     "steps": 20, "guidance": 5.0, "width": 32, "height": 32, "tie_tolerance": 0.0,
                     "bootstrap": {"resamples": 200, "seed": 0, "unit": "prompt"}, "device": "cpu", "dtype": "float32"},
        "models": [{"name": m, "role": "base" if m == "base" else "tuned", "model": "assets/tiny-sd",
                    "loras": [] if m == "base" else [{"path": f"out/{m}<script>", "scale": 1.0}], "images": f"images/{m}"}
                   for m in models],
        "scorers": {"shapes": {"scale": "0 to 1, higher is better", "options": {}}},
        "pairs": 16,
        "scores": {"shapes": {m: bootstrap_mean(scores[m], prompt_index, 200, 0) for m in models}},
        "comparisons": {"shapes": {t: compare_paired(scores[t], scores["base"], prompt_index, resamples=200).as_dict()
                                   for t in models[1:]}},
        "categories": {"shapes": per_category},
        "grids": [{"file": f"grids/grid-0{k}.png", "prompts": [4 * k - 4 + j for j in range(4)], "seeds": [0, 1],
                   "models": models} for k in (1, 2)],
        "plots": [],
        "files": {"scores": "scores.csv", "summary": "summary.md", "report": "report.html"},
    }


def test_report_renders_in_headless_chromium(tmp_path):
    browser = _browser()
    browser.require_browser()
    results = _eval_folder(tmp_path)
    written = write_report(results, tmp_path)
    shot = artifact_dir() / "report-screenshot.png"
    shot.unlink(missing_ok=True)
    problems = browser.check_report(written["report"], shot)
    assert not problems, "report.html in headless Chromium:\n" + "\n".join(problems)
    assert shot.stat().st_size > 20_000
    with Image.open(shot) as image:
        assert image.width >= 1280 and image.height > 1500  # the whole page, not just the first screen
        colours = image.convert("RGB").resize((64, 64)).getcolors(64 * 64)
        assert colours is None or len(colours) > 20  # not a blank page


def test_check_report_lists_broken_images_by_src(tmp_path):
    browser = _browser()
    if browser.browser_missing():
        pytest.skip(browser.browser_missing())
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head>'
                    '<body><img src="plots/missing.png" alt="gone"></body></html>')
    problems = browser.check_report(page)
    assert any("plots/missing.png" in p and "did not load" in p for p in problems), problems

"""The HTML report opened in headless Chromium: every image loads, no console errors, a screenshot is kept."""

import csv
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffalign.evaluation.generation import image_name
from diffalign.evaluation.report import write_report
from diffalign.evaluation.stats import bootstrap_mean, compare_paired

HERE = Path(__file__).resolve().parent
LONG_NAME = "dpo-beta5000-lr1e-5-rank64-steps2000-seed3"
LONG_PATH = "/mnt/shared/checkpoints/stable-diffusion-v1-5/snapshots/1d0c4ebf6ff58a5caecab40fa1406526bca4b5b9/unet_ema"
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
    """A small eval output: scores.csv of 3 models × 8 prompts × 3 seeds, their images, two grids, results from
    real stats; one model has a long name, the weights a long path."""
    rng = np.random.default_rng(0)
    models, categories = ["base", "tuned", LONG_NAME], ["circle", "square <b>"]
    prompt_index, seeds = np.repeat(np.arange(8), 3), np.tile([0, 1, 2], 8)
    scores = {"base": rng.random(24)}
    scores["tuned"] = np.clip(scores["base"] + rng.normal(0.08, 0.15, 24), 0, 1)
    scores[LONG_NAME] = np.clip(scores["base"] + rng.normal(-0.02, 0.1, 24), 0, 1)
    category = [categories[p % 2] for p in prompt_index]
    with open(root / "scores.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "prompt_index", "prompt", "category", "seed"] + [f"{m}/shapes" for m in models])
        for i in range(24):
            writer.writerow([i, prompt_index[i], f"a {category[i]} <i>#{prompt_index[i]}</i>", category[i], seeds[i]]
                            + [f"{scores[m][i]:.4f}" for m in models])
    (root / "grids").mkdir()
    for k, colour in enumerate(["red", "navy"], start=1):
        Image.new("RGB", (3 * 32, 4 * 32), colour).save(root / "grids" / f"grid-0{k}.png")
    for j, m in enumerate(models):
        (root / "images" / m).mkdir(parents=True)
        for p, s in zip(prompt_index, seeds):
            Image.new("RGB", (32, 32), (80 * j, 30 * int(s), 20 * int(p))).save(root / "images" / m / image_name(p, s))
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
        "settings": {"prompt_set": "demo", "prompt_source": "hand-made", "prompts": 8, "seeds": [0, 1, 2], "sampler": "ddim",
                     "steps": 20, "guidance": 5.0, "width": 32, "height": 32, "tie_tolerance": 0.0,
                     "bootstrap": {"resamples": 200, "seed": 0, "unit": "prompt"}, "device": "cpu", "dtype": "float32"},
        "models": [{"name": m, "role": "base" if m == "base" else "tuned", "model": LONG_PATH,
                    "loras": [] if m == "base" else [{"path": f"out/{m}<script>", "scale": 1.0}], "images": f"images/{m}"}
                   for m in models],
        "scorers": {"shapes": {"scale": "0 to 1, higher is better", "options": {}}},
        "pairs": 24,
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


_SAMPLES_JS = """
const panels = Array.from(document.querySelectorAll('.seed-panel'));
const shown = panels.filter(p => getComputedStyle(p).display !== 'none').map(p => p.dataset.seed);
const visible = panels.find(p => getComputedStyle(p).display !== 'none');
const figures = visible ? Array.from(visible.querySelectorAll('figure.sample')) : [];
const images = visible ? Array.from(visible.querySelectorAll('img')) : [];
return {
  shown: shown,
  figures: figures.length,
  scores: figures.filter(f => /^shapes -?\\d+\\.\\d{3}$/.test((f.querySelector('.score') || {}).textContent || '')).length,
  verdicts: visible ? visible.querySelectorAll('figure[data-verdict] .verdict').length : 0,
  rows: visible ? visible.querySelectorAll('.sample-row').length : 0,
  loaded: images.filter(i => i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 0).length,
  images: images.length,
};
"""

_WIDTHS_JS = """
const over = Array.from(document.querySelectorAll('main, main *')).filter(e => e.scrollWidth > e.clientWidth + 1
    && getComputedStyle(e).overflowX !== 'visible').map(e => e.tagName + '.' + e.className);
return [document.documentElement.scrollWidth, document.documentElement.clientWidth, over];
"""


def test_every_seed_score_and_winner_is_shown_and_the_page_fits_1400_px(tmp_path):
    browser = _browser()
    browser.require_browser()
    results = _eval_folder(tmp_path)
    report = write_report(results, tmp_path)["report"]
    from selenium.webdriver.common.by import By

    driver = browser.launch(1400, 900)
    try:
        driver.get(report.resolve().as_uri())
        page_width, client_width, scrolling = driver.execute_script(_WIDTHS_JS)
        assert page_width <= client_width and not scrolling, (page_width, client_width, scrolling)
        labels = driver.find_elements(By.CSS_SELECTOR, ".seed-tabs > label")
        assert [label.text for label in labels] == ["seed 0", "seed 1", "seed 2"]
        for seed, label in enumerate(labels):
            label.click()
            seen = driver.execute_script(_SAMPLES_JS)
            # 8 prompts × 3 models: each image loaded and scored, one winner mark per base/tuned pair
            assert seen == {"shown": [str(seed)], "figures": 24, "scores": 24, "verdicts": 16, "rows": 8,
                            "loaded": 24, "images": 24}, seen
        assert driver.execute_script(_WIDTHS_JS)[0] <= client_width
        scales = driver.execute_script(
            "return Array.from(document.querySelectorAll('.figs img')).map(i => i.clientWidth / i.naturalWidth)")
        assert len(scales) == 3 and min(scales) >= 0.66, scales  # the plots' 12 pt (16.7 px) text shown at >= 11 px
    finally:
        driver.quit()

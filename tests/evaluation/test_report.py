import csv
import html.parser

import pytest
from PIL import Image

from diffalign.evaluation import plots
from diffalign.evaluation.report import (
    read_scores_csv,
    render_html,
    render_markdown,
    write_report,
)

from ..permissions import modes, umask

EVIL = "<script>alert(1)</script>"


def _rate(value, low, high):
    return {"value": value, "ci_low": low, "ci_high": high}


def _comparison(wins, ties, losses, diff):
    n = wins + ties + losses
    return {
        "n": n, "prompts": n // 2, "wins": wins, "ties": ties, "losses": losses, "tie_tolerance": 0.0,
        "win_rate": _rate(wins / n, wins / n - 0.1, wins / n + 0.1), "tie_rate": _rate(ties / n, 0.0, ties / n + 0.1),
        "loss_rate": _rate(losses / n, losses / n - 0.05, losses / n + 0.1),
        "win_rate_decided": _rate(wins / (wins + losses), 0.4, 0.8) if wins + losses else _rate(None, None, None),
        "win_plus_half_tie": _rate((wins + ties / 2) / n, 0.45, 0.75), "mean_difference": _rate(diff, diff - 0.02, diff + 0.02),
        "resamples": 2000, "seed": 0, "confidence": 0.95,
    }


def _score(mean):
    return {"mean": mean, "median": mean, "std": 0.1, "ci_low": mean - 0.01, "ci_high": mean + 0.01, "n": 12}


def sample_results() -> dict:
    """Two tuned models, one scorer, two categories (one named with markup), one grid."""
    cats = {
        name: {"n": 6, "prompts": 3, "scores": {"base": _score(0.4), "tuned": _score(0.5), "sharp": _score(0.45)},
               "comparisons": {"tuned": _comparison(4, 1, 1, 0.1), "sharp": _comparison(3, 0, 3, 0.0)}}
        for name in ("circle", f"squares {EVIL}")
    }
    return {
        "diffalign_version": "0.1.0",
        "settings": {"prompt_set": "demo", "prompt_source": f"prompts{EVIL}.txt", "prompts": 6, "seeds": [0, 1],
                     "sampler": "ddim", "steps": 20, "guidance": 5.0, "width": 32, "height": 32, "tie_tolerance": 0.0,
                     "bootstrap": {"resamples": 2000, "seed": 0, "unit": "prompt"}, "device": "cpu", "dtype": "float32"},
        "models": [{"name": "base", "role": "base", "model": "assets/tiny-sd", "loras": [], "images": "images/base"},
                   {"name": "tuned", "role": "tuned", "model": "assets/tiny-sd",
                    "loras": [{"path": f"out/{EVIL}", "scale": 0.8}], "images": "images/tuned"},
                   {"name": "sharp", "role": "tuned", "model": "assets/tiny-sd",
                    "loras": [{"path": "out/sharp", "scale": 1.0}], "images": "images/sharp"}],
        "scorers": {"shapes": {"scale": "0 to 1, higher is better", "options": {}}},
        "pairs": 12,
        "scores": {"shapes": {"base": _score(0.41), "tuned": _score(0.52), "sharp": _score(0.44)}},
        "comparisons": {"shapes": {"tuned": _comparison(8, 2, 2, 0.11), "sharp": _comparison(6, 0, 6, 0.03)}},
        "categories": {"shapes": cats},
        "grids": [{"file": "grids/grid-01.png", "prompts": [0, 1], "seeds": [0, 1], "models": ["base", "tuned", "sharp"]}],
        "plots": [],
        "files": {"scores": "scores.csv", "summary": "summary.md", "report": "report.html"},
    }


def write_scores_csv(path, results: dict, prompt_text: str = "a red circle") -> None:
    """scores.csv rows for every prompt and seed of `results`, one column per model/scorer."""
    models = [m["name"] for m in results["models"]]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "prompt_index", "prompt", "category", "seed"] + [f"{m}/shapes" for m in models])
        for i in range(12):
            p, s = divmod(i, 2)
            writer.writerow([i, p, f"{prompt_text} {p}" if p else EVIL, "circle", s] + [0.1 * ((i + j) % 7) for j in range(len(models))])


def test_markdown_has_the_settings_and_every_table():
    md = render_markdown(sample_results())
    assert "6 prompts × 2 seeds (0, 1) = 12 pairs" in md and "ddim, 20 steps, guidance 5.0, 32×32 px" in md
    assert "| base | 0.410 | 0.410 | 0.100 | [0.400, 0.420] | 12 |" in md
    assert "| tuned | 12 | 66.7 % [56.7, 76.7] (8) | 16.7 % [0.0, 26.7] (2) |" in md
    assert "| sharp | 12 |" in md and "+0.110 [+0.090, +0.130]" in md
    assert "### By category" in md
    assert "| circle | 3 | 6 | tuned | 0.400 | 0.500 | 80.0 % [40.0, 80.0] | +0.100 [+0.080, +0.120] |" in md
    assert "| circle | 3 | 6 | sharp | 0.400 | 0.450 | 50.0 % [40.0, 80.0] | +0.000 [-0.020, +0.020] |" in md
    assert "| squares &lt;script>alert(1)&lt;/script> | 3 | 6 | sharp |" in md  # raw HTML does not survive
    assert "(prompts&lt;script>alert(1)&lt;/script>.txt)" in md and "<script>" not in md
    assert "|---|---:|" in md  # numbers right-aligned


def test_markdown_without_categories_or_decided_pairs():
    results = sample_results()
    results["categories"] = {}
    results["comparisons"]["shapes"]["sharp"] = _comparison(0, 12, 0, 0.0)
    md = render_markdown(results)
    assert "By category" not in md
    assert "| sharp | 12 | 0.0 % [-10.0, 10.0] (0) | 100.0 % [0.0, 110.0] (12) | 0.0 % [-5.0, 10.0] (0) | – |" in md


class _Collector(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.imgs = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs))


def test_html_is_self_contained_and_escapes_user_text():
    results = sample_results()
    results["plots"] = [{"file": "plots/win-rates.png", "title": "Win / tie / loss"}]
    page = render_html(results, prompts={0: EVIL, 1: "a blue square"})
    parser = _Collector()
    parser.feed(page)
    assert "script" not in parser.tags and "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert not any(word in page for word in ("http://", "https://", "@import", "url("))
    assert [img["src"] for img in parser.imgs] == ["plots/win-rates.png", "grids/grid-01.png"]
    assert all(img.get("alt") for img in parser.imgs)
    assert "#1: a blue square" in page and page.count("<figcaption>") == 2
    assert 'class="num">66.7 % [56.7, 76.7] (8)</td>' in page
    assert "out/&lt;script&gt;alert(1)&lt;/script&gt; × 0.8" in page  # LoRAs listed with their scale


def test_write_report_creates_plots_summary_and_html(tmp_path):
    results = sample_results()
    write_scores_csv(tmp_path / "scores.csv", results)
    (tmp_path / "grids").mkdir()
    Image.new("RGB", (64, 32), "white").save(tmp_path / "grids" / "grid-01.png")
    written = write_report(results, tmp_path)
    assert set(written) == {"summary", "report", "scores-shapes", "win-rates", "categories-shapes"}
    assert [p["file"] for p in results["plots"]] == ["plots/scores-shapes.png", "plots/win-rates.png", "plots/categories-shapes.png"]
    for entry in results["plots"]:
        with Image.open(tmp_path / entry["file"]) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 150
    assert (tmp_path / "summary.md").read_text().startswith("# Evaluation summary")
    page = (tmp_path / "report.html").read_text()
    assert 'src="plots/categories-shapes.png"' in page and "&lt;script&gt;" in page
    assert not list(tmp_path.rglob(".*"))  # no temporary files left behind


def test_the_report_summary_and_plots_get_the_umask_permissions(tmp_path):
    results = sample_results()
    write_scores_csv(tmp_path / "scores.csv", results)
    with umask(0o027):
        write_report(results, tmp_path)
    written = modes(tmp_path)
    assert written["report.html"] == written["summary.md"] == written["plots/win-rates.png"] == 0o640  # were 0600


def test_write_report_without_scores_csv_skips_the_distributions(tmp_path):
    results = sample_results()
    results["categories"] = {}
    written = write_report(results, tmp_path)
    assert set(written) == {"summary", "report", "win-rates"}


def test_read_scores_csv_names_a_bad_cell(tmp_path):
    path = tmp_path / "scores.csv"
    path.write_text("index,prompt_index,prompt,category,seed,base/shapes\n0,0,a,,0,0.5\n1,0,a,,1,oops\n")
    with pytest.raises(ValueError, match=r"line 3: column base/shapes is not a number: 'oops'"):
        read_scores_csv(path, ["base"], ["shapes"])
    path.write_text("index,prompt_index,prompt,category,seed,base/shapes\n0,0,a,,0,0.5\n1,1,b,,1,\n")
    scores, prompts = read_scores_csv(path, ["base"], ["shapes"])
    assert scores["shapes"]["base"].tolist() == [0.5] and prompts == {0: "a", 1: "b"}


def test_plots_cope_with_missing_values(tmp_path):
    import numpy as np

    plots.plot_score_distributions({"base": np.array([0.5, 0.5]), "tuned": np.array([])}, "shapes", tmp_path / "d.png")
    plots.plot_score_distributions({}, "shapes", tmp_path / "empty.png")
    plots.plot_win_rates({"shapes": {"tuned": _comparison(0, 4, 0, 0.0)}}, tmp_path / "w.png")
    plots.plot_category_win_rates({"x": {"prompts": 1, "comparisons": {}}}, tmp_path / "c.png")
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("d.png", "empty.png", "w.png", "c.png"))

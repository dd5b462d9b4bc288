import csv
import html.parser

import pytest
from PIL import Image

from diffalign.evaluation import plots
from diffalign.evaluation.generation import image_name
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
    assert ('class="num"><span class="value">66.7 %</span> <span class="ci">[56.7, 76.7]</span> '
            '<span class="count">(8)</span></td>') in page  # wraps between value, CI and count, not inside them
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


def _gallery_folder(root, results: dict, scores: dict[str, list[float]]) -> None:
    """scores.csv (prompts 0-1 × seeds 0-2, `scores[model]` in that order) and every image of the sample gallery,
    but for the image of model sharp, prompt 1, seed 2."""
    results["settings"]["seeds"] = [0, 1, 2]
    models = [m["name"] for m in results["models"]]
    with open(root / "scores.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "prompt_index", "prompt", "category", "seed"] + [f"{m}/shapes" for m in models])
        for i in range(6):
            p, s = divmod(i, 3)
            writer.writerow([i, p, ["a red circle", EVIL][p], "circle", s] + [scores[m][i] for m in models])
    for m in results["models"]:
        (root / m["images"]).mkdir(parents=True)
        for p in range(2):
            for s in range(3):
                if (m["name"], p, s) != ("sharp", 1, 2):
                    Image.new("RGB", (32, 32), "white").save(root / m["images"] / image_name(p, s))


class _Gallery(html.parser.HTMLParser):
    """The report's seed panels: {seed: [(model, verdict, winner, img src or None, caption text)]}, and the tabs."""

    def __init__(self):
        super().__init__()
        self.panels, self.tabs, self.seed, self.figure, self.in_caption = {}, [], None, None, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "input" and a.get("name") == "sample-seed":
            self.tabs.append((a["id"], a["value"], "checked" in a))
        elif tag == "div" and "seed-panel" in a.get("class", ""):
            self.seed = int(a["data-seed"])
            self.panels[self.seed] = []
        elif tag == "figure" and "sample" in a.get("class", ""):
            self.figure = [a["data-model"], a.get("data-verdict"), "winner" in a["class"], None, ""]
            self.panels[self.seed].append(self.figure)
        elif tag == "img" and self.figure is not None:
            self.figure[3] = a["src"]
        elif tag == "figcaption":
            self.in_caption = True

    def handle_endtag(self, tag):
        if tag == "figure":
            self.figure = None
        elif tag == "figcaption":
            self.in_caption = False

    def handle_data(self, data):
        if self.in_caption and self.figure is not None:
            self.figure[4] += data


def test_the_samples_show_every_seed_each_score_and_each_pairs_winner(tmp_path):
    results = sample_results()
    results["settings"]["tie_tolerance"] = 0.05
    # per (prompt, seed): tuned beats base, ties within 0.05, loses; sharp loses everywhere but once
    scores = {"base": [0.5, 0.5, 0.5, 0.2, 0.2, 0.2], "tuned": [0.6, 0.54, 0.3, 0.9, 0.2, 0.1],
              "sharp": [0.1, 0.1, 0.1, 0.1, 0.1, 0.9]}
    _gallery_folder(tmp_path, results, scores)
    write_report(results, tmp_path)
    page = (tmp_path / "report.html").read_text()
    gallery = _Gallery()
    gallery.feed(page)
    assert gallery.tabs == [("seed-tab-0", "0", True), ("seed-tab-1", "1", False), ("seed-tab-2", "2", False)]
    assert "#seed-tab-2:checked~#seed-panel-2{display:block}" in page and ".seed-panel{display:none}" in page
    assert sorted(gallery.panels) == [0, 1, 2]
    expected_verdicts = {"tuned": ["win", "tie", "loss", "win", "tie", "loss"], "sharp": ["loss"] * 5 + ["win"]}
    for seed, figures in gallery.panels.items():
        assert [f[0] for f in figures] == ["base", "tuned", "sharp"] * 2  # prompts 0 and 1, base first
        for p in range(2):
            row = figures[3 * p: 3 * p + 3]
            for model, verdict, winner, src, caption in row:
                score = scores[model][3 * p + seed]
                assert f"shapes {score:.3f}" in caption
                if model != "base":
                    assert verdict == expected_verdicts[model][3 * p + seed]
                    assert winner == (verdict == "win")
                if (model, p, seed) == ("sharp", 1, 2):
                    assert src is None and "missing" in page
                else:
                    assert src == f"images/{model}/{image_name(p, seed)}"
            assert row[0][2] == all(v == "loss" for v in (row[1][1], row[2][1]))  # base framed when it beats both
    tuned_caption = gallery.panels[0][1][4]
    assert "▲ beats base +0.100" in tuned_caption
    assert "= ties base +0.040" in gallery.panels[1][1][4] and "▼ base wins -0.200" in gallery.panels[2][1][4]
    assert page.count("▲ beats every tuned model") == sum(f[2] for fs in gallery.panels.values() for f in fs if f[0] == "base")
    assert "#1: &lt;script&gt;" in page and "tie when |Δ| ≤ 0.05" in page
    assert '<a href="grids/grid-01.png">' in page and 'src="grids/grid-01.png"' not in page  # the grids are linked


def test_without_scores_csv_the_report_shows_the_grid_pngs(tmp_path):
    results = sample_results()
    write_report(results, tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert 'src="grids/grid-01.png"' in page and "seed-panel" not in page


def test_a_bad_seed_in_scores_csv_is_named(tmp_path):
    results = sample_results()
    _gallery_folder(tmp_path, results, {m["name"]: [0.5] * 6 for m in results["models"]})
    text = (tmp_path / "scores.csv").read_text().splitlines()
    text[2] = text[2].replace(",circle,1,", ",circle,one,")
    (tmp_path / "scores.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match=r"scores.csv, line 3: column seed is not a whole number: 'one'"):
        write_report(results, tmp_path)


def test_plot_text_is_at_least_12_points(tmp_path, monkeypatch):
    import numpy as np

    sizes: dict[str, float] = {}

    def capture(fig, path):
        texts = [t for t in fig.findobj(lambda a: hasattr(a, "get_fontsize") and hasattr(a, "get_text")) if t.get_text()]
        sizes[path.name] = min(t.get_fontsize() for t in texts)
        return path

    monkeypatch.setattr(plots, "_save", capture)
    plots.plot_score_distributions({"base": np.array([0.2, 0.5]), "tuned": np.array([0.4, 0.6])}, "shapes", tmp_path / "d.png")
    plots.plot_win_rates({"shapes": {"tuned": _comparison(5, 2, 3, 0.1)}}, tmp_path / "w.png")
    plots.plot_category_win_rates({"x": {"prompts": 1, "comparisons": {"tuned": _comparison(2, 0, 1, 0.1)}}}, tmp_path / "c.png")
    assert sizes.keys() == {"d.png", "w.png", "c.png"} and min(sizes.values()) >= 12, sizes


def test_only_long_words_may_break_anywhere_in_a_table():
    results = sample_results()
    results["models"][0]["model"] = "/mnt/checkpoints/stable-diffusion-v1-5/snapshots/1d0c4ebf6ff58a5caecab40fa14065"
    page = render_html(results)
    assert '<td class="wrap">/mnt/checkpoints/stable-diffusion-v1-5/snapshots/' in page
    assert "<td>base</td><td>base</td>" in page  # a short word is never split ("bas|e" in a squeezed column)

"""The report's samples: the featured prompts' images side by side, one panel per seed, each image's score under it
and the winner of each base/tuned pair marked.

Plain HTML and CSS (one radio button per seed shows that seed's panel, so every seed is reachable without
scripts and the page is as tall as one seed). Images are referenced by their path relative to the eval folder.
"""

from __future__ import annotations

import csv
import html
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from .generation import image_name

CELL_PX = 128  # the width an image is shown at

CSS = """
.seed-tabs{position:relative}.seed-tabs>input{position:absolute;opacity:0;pointer-events:none}
.seed-tabs>label{display:inline-block;padding:3px 12px;margin:0 4px 8px 0;border:1px solid #bbb;border-radius:14px;cursor:pointer;font-size:14px}
.seed-tabs>input:checked+label{background:#1d1d1f;color:#fff;border-color:#1d1d1f}
.seed-tabs>input:focus-visible+label{outline:2px solid #1f5fbf;outline-offset:2px}
.seed-panel{display:none}
.sample-row{display:grid;grid-template-columns:minmax(140px,240px) 1fr;gap:12px;padding:8px 0;border-bottom:1px solid #eee}
.sample-row .prompt{margin:0;font-size:14px;overflow-wrap:anywhere}.sample-row .cells{display:flex;flex-wrap:wrap;gap:10px}
figure.sample{margin:0;padding:3px;border:3px solid transparent;border-radius:6px;width:""" + str(CELL_PX) + """px}
figure.sample.winner{border-color:#3a923a}figure.sample img{display:block;width:100%;height:auto;border:0}
.pixelated figure.sample img{image-rendering:pixelated}
figure.sample figcaption{font-size:13px;line-height:1.3;margin-top:3px;overflow-wrap:anywhere}
.sample .model{font-weight:600}.sample .score{display:block;font-variant-numeric:tabular-nums}
.verdict{display:inline-block;padding:0 6px;border-radius:8px;font-size:12px;color:#fff}
.verdict.win{background:#3a923a}.verdict.loss{background:#c0392b}.verdict.tie{background:#777}
.sample .missing{display:flex;align-items:center;justify-content:center;background:#ddd;color:#555;font-size:12px}
"""


@dataclass
class Sample:
    """One image of the gallery: its model, file (relative to the eval folder, None when absent), score, and for a
    tuned model's image its pair with the base image: "win", "tie" or "loss" and the score difference."""

    model: str
    file: str | None
    score: float | None
    verdict: str | None = None
    delta: float | None = None
    winner: bool = False


@dataclass
class Gallery:
    """The samples of the featured prompts for every seed, scored by one scorer."""

    scorer: str
    tie_tolerance: float
    seeds: list[int]
    prompts: list[tuple[int, str]]
    samples: dict[tuple[int, int], list[Sample]]  # (prompt_index, seed) -> one Sample per model, base first
    width: int | None = None  # the images' native size, when known
    height: int | None = None


def sample_scores(path: Path, models: list[str], scorer: str) -> tuple[dict[tuple[int, int], dict[str, float]], dict[int, str]]:
    """From scores.csv: {(prompt_index, seed): {model: score}} of one scorer (blank cells left out) and
    {prompt_index: prompt}; a ValueError names the file, line and column of a cell that is not a number."""
    scores: dict[tuple[int, int], dict[str, float]] = {}
    prompts: dict[int, str] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            key = []
            for column in ("prompt_index", "seed"):
                cell = row.get(column)
                try:
                    key.append(int(cell))
                except (TypeError, ValueError):
                    raise ValueError(f"{path}, line {line}: column {column} is not a whole number: {cell!r}") from None
            prompts[key[0]] = row.get("prompt") or ""
            for model in models:
                cell = row.get(f"{model}/{scorer}")
                if cell in (None, ""):
                    continue
                try:
                    scores.setdefault((key[0], key[1]), {})[model] = float(cell)
                except ValueError:
                    raise ValueError(f"{path}, line {line}: column {model}/{scorer} is not a number: {cell!r}") from None
    return scores, prompts


def pair_verdict(tuned: float, base: float, tie_tolerance: float) -> str:
    """The tuned image's result against the base image: "win" above the tolerance, "loss" below it, else "tie"
    (the rule of `stats.compare_paired`)."""
    difference = tuned - base
    return "win" if difference > tie_tolerance else "loss" if difference < -tie_tolerance else "tie"


def build_gallery(results: dict, out_dir: Path, scores_csv: Path) -> Gallery | None:
    """The gallery of an eval folder: the prompts of its grids, every evaluated seed, the first scorer's scores
    from `scores_csv`, the images in each model's folder. None when there is nothing to show."""
    scorers = list(results.get("scores", {}))
    models = [m for m in results.get("models", []) if m.get("images")]
    prompt_indices = list(dict.fromkeys(int(i) for grid in results.get("grids", []) for i in grid.get("prompts", [])))
    settings = results.get("settings", {})
    seeds = [int(s) for s in settings.get("seeds", [])]
    if not scorers or len(models) < 2 or not prompt_indices or not seeds or not scores_csv.is_file():
        return None
    scorer = scorers[0]
    names = [m["name"] for m in models]
    base = next((m["name"] for m in models if m.get("role") == "base"), names[0])
    names.remove(base)
    names.insert(0, base)
    folders = {m["name"]: m["images"] for m in models}
    scores, texts = sample_scores(scores_csv, names, scorer)
    tolerance = float(settings.get("tie_tolerance", 0.0) or 0.0)
    samples = {}
    for index in prompt_indices:
        for seed in seeds:
            by_model = scores.get((index, seed), {})
            row = []
            for name in names:
                file = f"{folders[name]}/{image_name(index, seed)}"
                row.append(Sample(name, file if (out_dir / file).is_file() else None, by_model.get(name)))
            base_sample = row[0]
            for sample in row[1:]:
                if sample.score is not None and base_sample.score is not None:
                    sample.verdict = pair_verdict(sample.score, base_sample.score, tolerance)
                    sample.delta = sample.score - base_sample.score
                    sample.winner = sample.verdict == "win"
            verdicts = [s.verdict for s in row[1:]]
            base_sample.winner = bool(verdicts) and all(v == "loss" for v in verdicts)
            samples[(index, seed)] = row
    return Gallery(scorer, tolerance, seeds, [(i, texts.get(i, "")) for i in prompt_indices], samples,
                   settings.get("width"), settings.get("height"))


_BADGE = {"win": "▲ beats {base}", "tie": "= ties {base}", "loss": "▼ {base} wins"}


def _sample_html(sample: Sample, gallery: Gallery, index: int, seed: int, base: str, tuned: list[str]) -> str:
    e = html.escape
    height = round(CELL_PX * gallery.height / gallery.width) if gallery.width and gallery.height else CELL_PX
    alt = f"{sample.model}, prompt #{index}, seed {seed}"
    if sample.file is None:
        picture = f'<div class="missing" style="height:{height}px" role="img" aria-label="{e(alt)} (missing)">missing</div>'
    else:
        picture = f'<img src="{e(quote(sample.file))}" alt="{e(alt)}" width="{CELL_PX}" height="{height}">'
    score = "–" if sample.score is None else f"{sample.score:.3f}"
    caption = f'<span class="model">{e(sample.model)}</span><span class="score">{e(gallery.scorer)} {score}</span>'
    if sample.verdict is not None:
        title = f"{sample.model} − {base} = {sample.delta:+.3f} (tie when |Δ| ≤ {gallery.tie_tolerance:g})"
        caption += f'<span class="verdict {sample.verdict}" title="{e(title)}">{e(_BADGE[sample.verdict].format(base=base))} {sample.delta:+.3f}</span>'
    elif sample.winner:
        beaten = "every tuned model" if len(tuned) > 1 else tuned[0]
        caption += f'<span class="verdict win">▲ beats {e(beaten)}</span>'
    classes = "sample winner" if sample.winner else "sample"
    verdict = f' data-verdict="{sample.verdict}"' if sample.verdict else ""
    return f'<figure class="{classes}" data-model="{e(sample.model)}"{verdict}>{picture}<figcaption>{caption}</figcaption></figure>'


def gallery_css(gallery: Gallery) -> str:
    """The gallery's style sheet, with the rule that shows the checked seed's panel."""
    shown = ",".join(f"#seed-tab-{k}:checked~#seed-panel-{k}" for k in range(len(gallery.seeds)))
    return CSS + f"{shown}{{display:block}}\n"


def render_gallery(gallery: Gallery) -> str:
    """The gallery as HTML: an explanation, a seed selector (the first seed shown) and one panel per seed."""
    e = html.escape
    first = gallery.samples[(gallery.prompts[0][0], gallery.seeds[0])]
    base, tuned = first[0].model, [s.model for s in first[1:]]
    intro = (f"<p>Under each image its <code>{e(gallery.scorer)}</code> score. For each prompt and seed every tuned "
             f"model's image is compared with the {e(base)} image drawn from the same noise: the badge says who won "
             f"(a tie when |Δ| ≤ {gallery.tie_tolerance:g}), and the winner of the pair has a green frame. "
             f"Pick a seed:</p>")
    tabs, panels = [], []
    for k, seed in enumerate(gallery.seeds):
        checked = " checked" if k == 0 else ""
        tabs.append(f'<input type="radio" name="sample-seed" id="seed-tab-{k}" value="{seed}"{checked}>'
                    f'<label for="seed-tab-{k}">seed {seed}</label>')
        rows = []
        for index, text in gallery.prompts:
            cells = "".join(_sample_html(s, gallery, index, seed, base, tuned) for s in gallery.samples[(index, seed)])
            rows.append(f'<div class="sample-row"><p class="prompt">#{index}: {e(text)}</p><div class="cells">{cells}</div></div>')
        panels.append(f'<div class="seed-panel" id="seed-panel-{k}" data-seed="{seed}">{"".join(rows)}</div>')
    small = gallery.width is not None and gallery.width < CELL_PX
    return (f'{intro}<div class="seed-tabs{" pixelated" if small else ""}">{"".join(tabs)}{"".join(panels)}</div>')

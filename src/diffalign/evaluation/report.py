"""The human-readable outputs of `diffalign eval`: summary.md, a self-contained report.html and its plots.

Both documents render the same tables from a results dict (the results.json schema); the HTML adds
the plots and image grids, referenced by their paths relative to the eval folder.
"""

from __future__ import annotations

import csv
import html
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np

from ..files import atomic_write_text
from . import plots
from .sample_gallery import Gallery, build_gallery, gallery_css, render_gallery


@dataclass
class Table:
    """A table as text cells; `numeric[i]` right-aligns column i."""

    header: list[str]
    rows: list[list[str]]
    numeric: list[bool]


def _num(x, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def _pct(estimate: dict | None, count: int | None = None) -> str:
    """'52.4 % [48.1, 56.0]' (+ ' (140)' with a count) from a {value, ci_low, ci_high} dict of a rate."""
    e = estimate or {}
    if e.get("value") is None:
        return "–"
    text = f"{100 * e['value']:.1f} %"
    if e.get("ci_low") is not None and e.get("ci_high") is not None:
        text += f" [{100 * e['ci_low']:.1f}, {100 * e['ci_high']:.1f}]"
    return text + (f" ({count})" if count is not None else "")


def _with_ci(e: dict | None, digits: int = 3, sign: bool = False) -> str:
    e = e or {}
    value = e.get("value", e.get("mean"))
    if value is None:
        return "–"
    fmt = f"{{:{'+' if sign else ''}.{digits}f}}"
    if e.get("ci_low") is None or e.get("ci_high") is None:
        return fmt.format(value)
    return f"{fmt.format(value)} [{fmt.format(e['ci_low'])}, {fmt.format(e['ci_high'])}]"


def _roles(results: dict) -> tuple[str | None, list[str]]:
    models = results.get("models", [])
    base = next((m["name"] for m in models if m.get("role") == "base"), None)
    return base, [m["name"] for m in models if m["name"] != base]


def settings_line(results: dict) -> str:
    """One sentence with what was evaluated: prompt set, prompts × seeds, sampler, steps, guidance, size."""
    s = results.get("settings", {})
    seeds = s.get("seeds", [])
    boot = s.get("bootstrap", {})
    return (
        f"Prompt set {s.get('prompt_set', '?')} ({s.get('prompt_source', '?')}): {s.get('prompts', '?')} prompts × "
        f"{len(seeds)} seeds ({', '.join(map(str, seeds))}) = {results.get('pairs', '?')} pairs · "
        f"{s.get('sampler', '?')}, {s.get('steps', '?')} steps, guidance {s.get('guidance', '?')}, "
        f"{s.get('width', '?')}×{s.get('height', '?')} px · {s.get('dtype', '?')} on {s.get('device', '?')} · "
        f"tie when |Δ| ≤ {s.get('tie_tolerance', 0)} · 95 % CIs from {boot.get('resamples', '?')} bootstrap "
        f"resamples of {boot.get('unit', 'prompt')}s (seed {boot.get('seed', '?')})."
    )


def models_table(results: dict) -> Table:
    """Name, role, model and LoRAs (path × scale) of each evaluated model."""
    rows = [
        [m["name"], m.get("role", ""), str(m.get("model", "")),
         ", ".join(f"{lora['path']} × {lora.get('scale', 1.0)}" for lora in m.get("loras", [])) or "–"]
        for m in results.get("models", [])
    ]
    return Table(["model", "role", "weights", "LoRAs"], rows, [False] * 4)


def score_table(results: dict, scorer: str) -> Table:
    """Per model: mean, median, std, 95 % CI of the mean and the number of images of one scorer."""
    rows = []
    for model, s in results.get("scores", {}).get(scorer, {}).items():
        ci = f"[{_num(s.get('ci_low'))}, {_num(s.get('ci_high'))}]"
        rows.append([model, _num(s.get("mean")), _num(s.get("median")), _num(s.get("std")), ci, str(s.get("n", ""))])
    return Table(["model", "mean", "median", "std", "95 % CI of mean", "n"], rows, [False] + [True] * 5)


def comparison_table(results: dict, scorer: str) -> Table:
    """Per tuned model vs the base: win / tie / loss shares, win among decided, win + ½ tie, mean difference."""
    rows = []
    for tuned, c in results.get("comparisons", {}).get(scorer, {}).items():
        rows.append([tuned, str(c.get("n", "")), _pct(c.get("win_rate"), c.get("wins")), _pct(c.get("tie_rate"), c.get("ties")),
                     _pct(c.get("loss_rate"), c.get("losses")), _pct(c.get("win_rate_decided")),
                     _pct(c.get("win_plus_half_tie")), _with_ci(c.get("mean_difference"), sign=True)])
    header = ["tuned vs base", "pairs", "win", "tie", "loss", "win among decided", "win + ½ tie", "mean Δ"]
    return Table(header, rows, [False] + [True] * 7)


def category_table(results: dict, scorer: str) -> Table | None:
    """One row per category and tuned model: prompts, pairs, base and tuned means, win among decided, mean Δ."""
    categories = results.get("categories", {}).get(scorer) or {}
    if not categories:
        return None
    base, tuned = _roles(results)
    header = ["category", "prompts", "pairs", "tuned", f"mean {base or 'base'}", "mean tuned", "win among decided", "mean Δ"]
    rows = []
    for name, entry in categories.items():
        scores = entry.get("scores", {})
        for t in tuned:
            c = entry.get("comparisons", {}).get(t) or {}
            rows.append([str(name), str(entry.get("prompts", "")), str(entry.get("n", "")), t, _num((scores.get(base) or {}).get("mean")),
                         _num((scores.get(t) or {}).get("mean")), _pct(c.get("win_rate_decided")), _with_ci(c.get("mean_difference"), sign=True)])
    return Table(header, rows, [False, True, True, False, True, True, True, True])


def criteria_table(results: dict, scorer: str) -> Table | None:
    """For scorers made of several criteria (the demo's `shapes`): each criterion's mean per model."""
    by_model = results.get("criteria", {}).get(scorer) or {}
    if not by_model:
        return None
    models = list(by_model)
    names = list(dict.fromkeys(k for means in by_model.values() for k in means))
    rows = [[name, *(_num(by_model[m].get(name)) for m in models)] for name in names]
    return Table(["criterion", *models], rows, [False] + [True] * len(models))


def _sections(results: dict) -> list[tuple[str, str, list[tuple[str, Table]]]]:
    """Per scorer: (name, description, [(caption, table)]) in the order of results["scores"]."""
    out = []
    for scorer in results.get("scores", {}):
        info = results.get("scorers", {}).get(scorer, {})
        tables = [("Scores per model", score_table(results, scorer)), ("Tuned vs base, pair by pair", comparison_table(results, scorer))]
        if (cats := category_table(results, scorer)) is not None:
            tables.append(("By category", cats))
        if (crit := criteria_table(results, scorer)) is not None:
            tables.append(("Mean of each criterion", crit))
        out.append((scorer, str(info.get("scale", "")), [(cap, t) for cap, t in tables if t.rows]))
    return out


def _md_text(text: str) -> str:
    """Text that Markdown shows as written: no inline HTML (a `<` becomes &lt;)."""
    return text.replace("<", "&lt;")


def _md_table(table: Table) -> str:
    def cell(text: str) -> str:
        return _md_text(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, table.header)) + " |",
             "|" + "|".join("---:" if n else "---" for n in table.numeric) + "|"]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in table.rows]
    return "\n".join(lines)


def render_markdown(results: dict) -> str:
    """summary.md: settings, models, and per scorer the score, tuned-vs-base and per-category tables."""
    parts = ["# Evaluation summary", "", _md_text(settings_line(results)), "", "## Models", "", _md_table(models_table(results))]
    for scorer, scale, tables in _sections(results):
        parts += ["", f"## Scorer `{scorer}`"] + (["", _md_text(scale)] if scale else [])
        for caption, table in tables:
            parts += ["", f"### {caption}", "", _md_table(table)]
    parts += ["", "Rates are shares of prompt-seed pairs, with 95 % bootstrap CIs in brackets and counts in parentheses."]
    return "\n".join(parts) + "\n"


CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;margin:0;background:#f6f7f9}
main{max-width:1200px;margin:0 auto;padding:24px 32px;background:#fff}
h1{font-size:26px;margin:0 0 8px}h2{font-size:20px;margin:32px 0 8px;border-bottom:1px solid #ddd}h3{font-size:16px;margin:20px 0 6px}
.scroll{overflow-x:auto}table{border-collapse:collapse;margin:6px 0 12px;font-size:14px;max-width:100%}
th,td{padding:4px 8px;border-bottom:1px solid #e3e3e3;text-align:left;vertical-align:top;overflow-wrap:break-word}
td.wrap{overflow-wrap:anywhere}
th{background:#f0f2f5;font-weight:600}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;overflow-wrap:normal}
td.num span{white-space:nowrap}td.num .ci,td.num .count{display:inline-block;color:#555;font-size:12px}
p,dd,figcaption{overflow-wrap:anywhere}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,520px),1fr));gap:20px}
figure{margin:0}figure img{max-width:100%;height:auto;border:1px solid #e3e3e3;image-rendering:auto}
figcaption{font-size:13px;color:#555;margin-top:4px}figcaption ul{margin:4px 0;padding-left:20px}
footer{margin-top:32px;font-size:13px;color:#555;border-top:1px solid #ddd;padding-top:8px}
footer dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px}footer dd{margin:0}td code,p code{font-size:13px}
"""


WRAP_WORD = 20  # characters: a longer word in a text cell may be broken anywhere
_NUMBER_PARTS = re.compile(r"^(?P<value>.*?)(?: (?P<ci>\[[^\]]*\]))?(?: (?P<count>\(\d+\)))?$")


def _num_cell(text: str) -> str:
    """A number cell as HTML: value, CI and count in spans that wrap as units, so a narrow column breaks
    '66.7 % [56.7, 76.7] (8)' between them and not inside a number."""
    parts = _NUMBER_PARTS.match(text)
    return " ".join(f'<span class="{name}">{html.escape(parts[name])}</span>'
                    for name in ("value", "ci", "count") if parts[name])


def _html_table(table: Table) -> str:
    def cls(i: int, text: str = "") -> str:
        if table.numeric[i]:
            return ' class="num"'
        # a path or long model name may break anywhere; short words never do
        return ' class="wrap"' if any(len(word) > WRAP_WORD for word in text.split()) else ""

    def cell(i: int, text: str) -> str:
        return _num_cell(text) if table.numeric[i] else html.escape(text)

    head = "".join(f"<th{cls(i)}>{html.escape(h)}</th>" for i, h in enumerate(table.header))
    body = "".join("<tr>" + "".join(f"<td{cls(i, c)}>{cell(i, c)}</td>" for i, c in enumerate(row)) + "</tr>"
                   for row in table.rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _figure(file: str, alt: str, caption: str) -> str:
    src = html.escape(quote(file.replace(os.sep, "/")))
    return f'<figure><img src="{src}" alt="{html.escape(alt)}"><figcaption>{caption}</figcaption></figure>'


def _grid_caption(grid: dict, prompts: dict[int, str] | None) -> str:
    seeds = ", ".join(map(str, grid.get("seeds", [])))
    models = ", ".join(grid.get("models", []))
    head = f"Models {html.escape(models)}; seeds {html.escape(seeds)}; prompts:"
    items = "".join(f"<li>#{int(i)}: {html.escape((prompts or {}).get(int(i), '(text not in scores.csv)'))}</li>"
                    for i in grid.get("prompts", []))
    return f"{head}<ul>{items}</ul>"


def _grid_links(results: dict) -> str:
    links = " · ".join(f'<a href="{html.escape(quote(g["file"]))}">{html.escape(g["file"])}</a>' for g in results["grids"])
    seeds = sorted({int(s) for g in results["grids"] for s in g.get("seeds", [])})
    return f"<p>The same prompts as image grids (seeds {', '.join(map(str, seeds))}): {links}</p>"


def render_html(results: dict, prompts: dict[int, str] | None = None, gallery: Gallery | None = None) -> str:
    """report.html: one self-contained page (inline CSS, no scripts) with the tables, plots and samples.

    With a `gallery` the samples are its images with their scores and pair winners, every seed selectable,
    and the grid PNGs are linked; without one the grid PNGs are shown. `prompts` maps prompt_index -> text
    for the grid captions (otherwise they show the indices).
    """
    e = html.escape
    body = [f"<h1>Evaluation report</h1><p>{e(settings_line(results))}</p>", "<h2>Models</h2>", _html_table(models_table(results))]
    for scorer, scale, tables in _sections(results):
        body.append(f"<h2>Scorer <code>{e(scorer)}</code></h2>" + (f"<p>{e(scale)}</p>" if scale else ""))
        body += [f"<h3>{e(caption)}</h3>{_html_table(table)}" for caption, table in tables]
    body.append("<p>Rates are shares of prompt-seed pairs, with 95 % bootstrap CIs in brackets and counts in parentheses.</p>")
    if results.get("plots"):
        figs = "".join(_figure(p["file"], p.get("title", p["file"]), e(p.get("title", ""))) for p in results["plots"])
        body.append(f'<h2>Figures</h2><div class="figs">{figs}</div>')
    if gallery is not None:
        body.append(f"<h2>Samples (same prompt and seed across models)</h2>{render_gallery(gallery)}")
        if results.get("grids"):
            body.append(_grid_links(results))
    elif results.get("grids"):
        figs = "".join(
            _figure(g["file"], f"Image grid {i + 1}: models {', '.join(g.get('models', []))}", _grid_caption(g, prompts))
            for i, g in enumerate(results["grids"])
        )
        body.append(f'<h2>Samples (same prompt and seed across models)</h2><div class="figs">{figs}</div>')
    settings = "".join(f"<dt>{e(str(k))}</dt><dd>{e(v if isinstance(v, str) else json.dumps(v))}</dd>"
                       for k, v in results.get("settings", {}).items())
    files = " · ".join(f'<a href="{e(quote(str(v)))}">{e(str(v))}</a>' for v in results.get("files", {}).values())
    body.append(f"<footer><dl>{settings}<dt>diffalign</dt><dd>{e(str(results.get('diffalign_version', '?')))}</dd></dl>{files}</footer>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
        f"<title>diffalign evaluation: {e(str(results.get('settings', {}).get('prompt_set', '')))}</title>"
        f"<style>{CSS}{gallery_css(gallery) if gallery is not None else ''}</style></head><body><main>{''.join(body)}</main></body></html>\n"
    )


def _write_text(path: Path, text: str) -> Path:
    atomic_write_text(path, text)
    return path


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "scorer"


def read_scores_csv(path: Path, models: list[str], scorers: list[str]) -> tuple[dict, dict[int, str]]:
    """From scores.csv: {scorer: {model: scores}} (blank cells skipped) and {prompt_index: prompt}."""
    scores: dict[str, dict[str, list[float]]] = {s: {} for s in scorers}
    prompts: dict[int, str] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            if row.get("prompt_index") not in (None, ""):
                prompts[int(row["prompt_index"])] = row.get("prompt", "")
            for scorer in scorers:
                for model in models:
                    cell = row.get(f"{model}/{scorer}")
                    if cell not in (None, ""):
                        try:
                            scores[scorer].setdefault(model, []).append(float(cell))
                        except ValueError:
                            raise ValueError(f"{path}, line {line}: column {model}/{scorer} is not a number: {cell!r}") from None
    return {s: {m: np.asarray(v) for m, v in by.items()} for s, by in scores.items()}, prompts


def write_report(results: dict, out_dir) -> dict[str, Path]:
    """Draw the plots (distributions from out_dir/scores.csv if present), write summary.md and report.html (its
    samples: the grids' prompts for every seed, with the first scorer's scores from scores.csv).

    Fills results["plots"] with {"file", "title"} entries relative to out_dir and returns the written paths
    by key: "summary", "report" and one per plot (the file stem, e.g. "scores-shapes").
    """
    out_dir = Path(out_dir)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    base, tuned = _roles(results)
    scorers = list(results.get("scores", {}))
    written: dict[str, Path] = {}
    entries: list[dict] = []
    prompts: dict[int, str] = {}

    def add(stem: str, title: str, draw) -> None:
        stem = next(f"{stem}{suffix}" for suffix in ["", *range(2, len(written) + 3)] if f"{stem}{suffix}" not in written)
        written[stem] = draw(out_dir / "plots" / f"{stem}.png")
        entries.append({"file": f"plots/{stem}.png", "title": title})

    csv_path = out_dir / results.get("files", {}).get("scores", "scores.csv")
    if csv_path.is_file():
        distributions, prompts = read_scores_csv(csv_path, ([base] if base else []) + tuned, scorers)
        for scorer in scorers:
            if distributions[scorer]:
                add(f"scores-{_slug(scorer)}", f"Distribution of {scorer} scores per model",
                    lambda p, s=scorer: plots.plot_score_distributions(distributions[s], s, p))
    if any(results.get("comparisons", {}).values()):
        add("win-rates", "Win / tie / loss against the base", lambda p: plots.plot_win_rates(results["comparisons"], p))
    for scorer, categories in results.get("categories", {}).items():
        if categories:
            add(f"categories-{_slug(scorer)}", f"Win rate among decided pairs per category ({scorer})",
                lambda p, c=categories, s=scorer: plots.plot_category_win_rates(c, p, scorer=s))
    results["plots"] = entries
    files = results.get("files", {})
    written["summary"] = _write_text(out_dir / files.get("summary", "summary.md"), render_markdown(results))
    gallery = build_gallery(results, out_dir, csv_path)
    written["report"] = _write_text(out_dir / files.get("report", "report.html"), render_html(results, prompts, gallery))
    return written

"""The methods table: one row per training method from one `diffalign eval` of many runs, seeds pooled.

Tuned models named `<method>-seed<k>` in the evaluation (or `<method>` alone: one run) are grouped by
method. For each method, with the base's scores on the same prompts and seeds:

- mean reward gain (tuned − base) and the win rate among decided pairs, pooled over the method's training
  seeds, each with a 95 % bootstrap CI that resamples prompts (every pair of a prompt, over evaluation and
  training seeds, moves together);
- the per-prompt win rate: each prompt's evaluation seeds averaged first, for the base and for each run,
  then wins counted over (run, prompt), with the same prompt bootstrap;
- the spread over training seeds: each run's win rate and gain, listed;
- time per run: the training loop's seconds from each run's `metrics.jsonl` (model loading excluded).
"""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config.options import MISSING, option, out_option, scorers_option
from .scoring import split_scorer_names
from .stats import compare_paired

SEEDED = re.compile(r"^(?P<method>.+)-seed(?P<seed>\d+)$")


@dataclass(kw_only=True)
class MethodTableOptions:
    """The options of `diffalign method-table`: which evaluation, which scorer, how many resamples, where to."""

    eval_dir: str | Path = option(MISSING, "a `diffalign eval` output folder (results.json, scores.csv)",
                                  positional=True)
    out: str | Path | None = out_option("Markdown file to write (default: EVAL_DIR/methods.md)", default=None)
    scorer: str | list[str] | None = scorers_option(None, "which scorer's scores, one name (default: the "
                                                    "evaluation's first)")
    resamples: int = option(2000, "bootstrap resamples", min=1)

    def __post_init__(self) -> None:
        names = split_scorer_names([self.scorer] if isinstance(self.scorer, str) else list(self.scorer or []))
        if len(names) > 1:
            raise ValueError(f"--scorer {','.join(names)}: the methods table is of one scorer; give one of them")
        self.scorer = names[0] if names else None


@dataclass
class MethodRow:
    """One method's pooled statistics over its runs (training seeds)."""

    method: str
    runs: list[str]
    seeds: list[int | None]
    gain: dict
    win_rate: dict
    prompt_win_rate: dict
    per_run: list[dict] = field(default_factory=list)
    seconds: list[float | None] = field(default_factory=list)


def _read_scores(folder: Path) -> tuple[list[dict], list[str]]:
    with open(folder / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{folder / 'scores.csv'} holds no scores")
    return rows, list(rows[0])


def _run_seconds(lora_path: str | None) -> float | None:
    """The training loop's duration from the last `seconds` of a run folder's metrics.jsonl, if there is one."""
    if not lora_path:
        return None
    folder = Path(lora_path)
    folder = folder if folder.is_dir() else folder.parent
    metrics = folder / "metrics.jsonl"
    if not metrics.is_file():
        return None
    seconds = [json.loads(line).get("seconds") for line in metrics.read_text().splitlines() if line.strip()]
    seconds = [s for s in seconds if s is not None]
    return float(seconds[-1]) if seconds else None


def method_rows(folder: str | Path, scorer: str | None = None, resamples: int = MethodTableOptions.resamples,
                seed: int = 0) -> list[MethodRow]:
    """The methods of the evaluation in `folder` (its results.json and scores.csv), in the report's model order."""
    folder = Path(folder)
    results = json.loads((folder / "results.json").read_text())
    scorer = scorer or next(iter(results["scorers"]))  # the first scorer of the evaluation by default
    rows, columns = _read_scores(folder)
    base = next(m for m in results["models"] if m["role"] == "base")["name"]
    tuned = [m for m in results["models"] if m["role"] == "tuned"]
    missing = [c for c in (f"{base}/{scorer}", *(f"{m['name']}/{scorer}" for m in tuned)) if c not in columns]
    if missing:
        raise ValueError(f"{folder / 'scores.csv'}: no column(s) {missing}; scorers there: {columns}")
    prompts = np.array([int(r["prompt_index"]) for r in rows])
    base_scores = np.array([float(r[f"{base}/{scorer}"]) for r in rows])
    unique_prompts = np.unique(prompts)

    def prompt_means(values: np.ndarray) -> np.ndarray:
        return np.array([values[prompts == p].mean() for p in unique_prompts])

    base_by_prompt = prompt_means(base_scores)
    groups: dict[str, list[dict]] = defaultdict(list)
    for model in tuned:
        match = SEEDED.match(model["name"])
        groups[match["method"] if match else model["name"]].append(model)
    out = []
    for method, models in groups.items():
        cand, basel, grp, p_cand, p_base, p_grp, per_run, seeds, seconds = [], [], [], [], [], [], [], [], []
        for model in models:
            scores = np.array([float(r[f"{model['name']}/{scorer}"]) for r in rows])
            cand.append(scores), basel.append(base_scores), grp.append(prompts)
            p_cand.append(prompt_means(scores)), p_base.append(base_by_prompt), p_grp.append(unique_prompts)
            one = compare_paired(scores, base_scores, prompts, results["settings"]["tie_tolerance"], resamples, seed)
            per_run.append({"name": model["name"], "win_rate": one.win_rate_decided.value,
                            "gain": one.mean_difference.value})
            match = SEEDED.match(model["name"])
            seeds.append(int(match["seed"]) if match else None)
            loras = model.get("loras") or []
            seconds.append(_run_seconds(loras[0]["path"] if loras else None))
        tol = results["settings"]["tie_tolerance"]
        pooled = compare_paired(np.concatenate(cand), np.concatenate(basel), np.concatenate(grp), tol, resamples, seed)
        by_prompt = compare_paired(np.concatenate(p_cand), np.concatenate(p_base), np.concatenate(p_grp), tol,
                                   resamples, seed)
        out.append(MethodRow(method, [m["name"] for m in models], seeds, pooled.mean_difference.as_dict(),
                             pooled.win_rate_decided.as_dict(), by_prompt.win_rate_decided.as_dict(), per_run, seconds))
    return out


def _pct(e: dict) -> str:
    if e["value"] is None:
        return "–"
    return f"{100 * e['value']:.1f} % ({100 * e['ci_low']:.1f}–{100 * e['ci_high']:.1f})"


def _gain(e: dict) -> str:
    if e["value"] is None:
        return "–"
    return f"{e['value']:+.3f} ({e['ci_low']:+.3f} to {e['ci_high']:+.3f})"


def _time(seconds: list[float | None]) -> str:
    known = [s for s in seconds if s is not None]
    if not known:
        return "–"
    mean = sum(known) / len(known)
    return f"{mean / 60:.1f} min" + (f" ({min(known) / 60:.1f}–{max(known) / 60:.1f})" if len(known) > 1 else "")


def render_method_table(rows: list[MethodRow], settings: dict | None = None) -> str:
    """The methods table in Markdown, best pooled win rate first, with a line on what it measured."""
    ordered = sorted(rows, key=lambda r: -(r.win_rate["value"] if r.win_rate["value"] is not None else -1))
    lines = [
        "| method | runs | mean reward gain (95 % CI) | win rate, decided pairs (95 % CI) | per-prompt win rate "
        "(95 % CI) | per run: win rate / gain | train time per run |",
        "|---|---:|---|---|---|---|---|",
    ]
    for r in ordered:
        spread = ", ".join(f"{100 * p['win_rate']:.1f} % / {p['gain']:+.3f}" for p in r.per_run
                           if p["win_rate"] is not None)
        lines.append(f"| {r.method} | {len(r.runs)} | {_gain(r.gain)} | {_pct(r.win_rate)} | {_pct(r.prompt_win_rate)} | "
                     f"{spread} | {_time(r.seconds)} |")
    if settings:
        lines.append("")
        lines.append(
            f"Evaluation: {settings.get('prompts')} prompts ({settings.get('prompt_set')}) × seeds {settings.get('seeds')}, "
            f"{settings.get('sampler')} {settings.get('steps')} steps, guidance {settings.get('guidance')}; each method's "
            "runs (training seeds) pooled, 95 % CIs from a bootstrap over prompts; per run in training-seed order. "
            "Train time: the training loop (model loading excluded)."
        )
    return "\n".join(lines) + "\n"


def write_method_table(folder: str | Path, out: str | Path | None = None, scorer: str | None = None,
                       resamples: int = MethodTableOptions.resamples) -> Path:
    """Write the methods table of the evaluation in `folder` to `out` (default `folder/methods.md`)."""
    folder = Path(folder)
    rows = method_rows(folder, scorer, resamples)
    settings = json.loads((folder / "results.json").read_text())["settings"]
    path = Path(out) if out else folder / "methods.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_method_table(rows, settings))
    return path

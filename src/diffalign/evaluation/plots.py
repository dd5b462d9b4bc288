"""Figures of an evaluation: score distributions, win/tie/loss bars, win rates per category (PNG files).

Figures are built as matplotlib `Figure` objects (no pyplot, so no global state) and rendered by Agg.
Comparison dicts are `stats.PairedComparison.as_dict()` outputs.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure

from ..files import atomic_write

DPI = 100
WIN, TIE, LOSS = "#3a923a", "#b8b8b8", "#c0392b"
WIDTH_IN = 6.4  # about the width of a report column, so a figure is shown near its own size
LABEL_CHARS = 24  # longer model and category names are wrapped onto several lines
# Sizes in points (at DPI 100, 1 pt = 1.4 px): readable when the report shows a figure at about 2/3 of its width.
FONTS = {"font.size": 13, "axes.titlesize": 14, "axes.labelsize": 13, "xtick.labelsize": 12, "ytick.labelsize": 12,
         "legend.fontsize": 12}


def _save(fig: Figure, path) -> Path:
    """Write `fig` as a PNG to `path` atomically (a temporary file in the same folder, then a rename)."""
    return atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=DPI, bbox_inches="tight"))


def _label(text: str) -> str:
    """`text` wrapped at LABEL_CHARS characters (a long model name would widen the figure and shrink its text)."""
    return textwrap.fill(text, LABEL_CHARS)


def _value(estimate: dict | None, key: str = "value") -> float:
    value = (estimate or {}).get(key)
    return float("nan") if value is None else float(value)


def _error(estimate: dict | None) -> tuple[float, float, float]:
    """(value, distance down to ci_low, distance up to ci_high), NaN-safe for matplotlib error bars."""
    value, low, high = _value(estimate), _value(estimate, "ci_low"), _value(estimate, "ci_high")
    if any(np.isnan([value, low, high])):
        return value, 0.0, 0.0
    return value, max(0.0, value - low), max(0.0, high - value)


@rc_context(FONTS)
def plot_score_distributions(scores: dict[str, np.ndarray], scorer: str, path) -> Path:
    """Overlaid step histograms of each model's scores for one scorer, each model's mean as a dashed line."""
    fig = Figure(figsize=(WIDTH_IN, 3.8), dpi=DPI)
    ax = fig.subplots()
    finite = {name: np.asarray(v, float)[np.isfinite(np.asarray(v, float))] for name, v in scores.items()}
    pooled = np.concatenate([v for v in finite.values()] or [np.zeros(0)])
    if pooled.size:
        low, high = float(pooled.min()), float(pooled.max())
        bins = np.linspace(low, high if high > low else low + 1e-6, 31)
    for i, (name, values) in enumerate(finite.items()):
        color = f"C{i % 10}"
        if values.size == 0:
            continue
        ax.hist(values, bins=bins, histtype="step", linewidth=1.8, color=color, label=_label(f"{name} (mean {values.mean():.3f})"))
        ax.axvline(values.mean(), color=color, linestyle="--", linewidth=1.2)
    if not pooled.size:
        ax.text(0.5, 0.5, "no scores", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(f"{scorer} score")
    ax.set_ylabel("images")
    ax.set_title(textwrap.fill(f"{scorer}: score distribution per model", 2 * LABEL_CHARS) + "\n(dashed: mean)")
    if pooled.size:
        ax.legend(frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    return _save(fig, path)


def _stacked_rows(ax, labels: list[str], comparisons: list[dict]) -> None:
    """Horizontal win/tie/loss bars, the win-rate CI at the end of the win segment and win among decided."""
    y = np.arange(len(labels))[::-1]
    wins = np.array([_value(c.get("win_rate")) for c in comparisons])
    ties = np.array([_value(c.get("tie_rate")) for c in comparisons])
    losses = np.array([_value(c.get("loss_rate")) for c in comparisons])
    clean = [np.nan_to_num(a) for a in (wins, ties, losses)]
    ax.barh(y, clean[0], height=0.6, color=WIN, label="win")
    ax.barh(y, clean[1], height=0.6, left=clean[0], color=TIE, label="tie")
    ax.barh(y, clean[2], height=0.6, left=clean[0] + clean[1], color=LOSS, label="loss")
    for yi, c in zip(y, comparisons):
        value, down, up = _error(c.get("win_rate"))
        if not np.isnan(value):
            ax.errorbar(value, yi, xerr=[[down], [up]], color="black", capsize=4, linewidth=1.2)
        value, down, up = _error(c.get("win_rate_decided"))
        if not np.isnan(value):
            ax.errorbar(value, yi + 0.18, xerr=[[down], [up]], fmt="D", color="#1f3a93", markersize=4, capsize=3,
                        linewidth=1, label="win among decided" if yi == y[0] else None)
    ax.axvline(0.5, color="black", linestyle=":", linewidth=1)
    ax.set_yticks(y, labels)
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:.0%}")


@rc_context(FONTS)
def plot_win_rates(comparisons: dict[str, dict[str, dict]], path) -> Path:
    """Stacked win/tie/loss share per scorer and tuned model (error bar: CI of the win rate; line at 50 %)."""
    labels, rows = [], []
    for scorer, by_model in comparisons.items():
        for tuned, comparison in by_model.items():
            labels.append(_label(f"{tuned} · {scorer}"))
            rows.append(comparison)
    fig = Figure(figsize=(WIDTH_IN, 1.6 + 0.7 * max(1, len(rows))), dpi=DPI)
    ax = fig.subplots()
    if rows:
        _stacked_rows(ax, labels, rows)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    else:
        ax.text(0.5, 0.5, "no comparisons", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("Tuned vs base, pair by pair\n(share of pairs; black bar: 95 % CI of the win rate)")
    return _save(fig, path)


@rc_context(FONTS)
def plot_category_win_rates(categories: dict[str, dict], path, scorer: str | None = None) -> Path:
    """Win rate among decided pairs per category and tuned model, with 95 % CIs and a line at 50 %.

    `categories` is results["categories"][scorer]: {category: {"n", "prompts", "comparisons": {tuned: dict}}}.
    """
    names = list(categories)
    tuned = sorted({t for entry in categories.values() for t in (entry.get("comparisons") or {})})
    fig = Figure(figsize=(WIDTH_IN, 1.5 + 0.35 * max(1, len(names)) * max(1, len(tuned))), dpi=DPI)
    ax = fig.subplots()
    height = 0.8 / max(1, len(tuned))
    base_y = np.arange(len(names))[::-1]
    for j, model in enumerate(tuned):
        y = base_y + 0.4 - height * (j + 0.5)
        estimates = [(categories[c].get("comparisons") or {}).get(model, {}).get("win_rate_decided") for c in names]
        errors = np.array([_error(e) for e in estimates]).reshape(-1, 3)
        ax.barh(y, np.nan_to_num(errors[:, 0]), height=height * 0.9, color=f"C{j % 10}", label=_label(model))
        ax.errorbar(np.nan_to_num(errors[:, 0]), y, xerr=errors[:, 1:].T, fmt="none", color="black", capsize=3)
    ax.axvline(0.5, color="black", linestyle=":", linewidth=1)
    ax.set_yticks(base_y, [_label(f"{c} ({categories[c].get('prompts', '?')} prompts)") for c in names])
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.set_xlabel("win rate among decided pairs (95 % CI)")
    ax.set_title(f"Win rate per category{f' ({scorer})' if scorer else ''}")
    if tuned:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=min(2, len(tuned)), frameon=False)
    return _save(fig, path)

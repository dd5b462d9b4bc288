"""The per-round log of an online run: OUTPUT_DIR/rounds.jsonl, plotted in rounds.png at the end.

One JSON line per round, written when its training ends: the reward's mean and spread (with several rewards
each one's too, `reward/NAME/mean` and `reward/NAME/std`; every image's scores are in round_scores.jsonl,
`round_scores`), the advantages' spread, the win rate against the base model (when compared), the means of the
method's metrics over the round's micro-steps (ratio, clip fraction, approximate KL, ...) and the round's time
split into sample / reward / train seconds; with the reward-hacking monitor, the gold score of the weights that
sampled the round (`gold`, `gold/NAME`, `monitor_warning`; the final weights' under `final_evaluation` in the last
line: `monitor`), drawn beside the reward (`gold_plot`). A resumed run rewrites the lines of the rounds from its
checkpoint on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...files import atomic_write_text, read_jsonl
from .gold_plot import draw_gold

ROUNDS_LOG = "rounds.jsonl"
ROUNDS_DIR = "rounds"  # human preference: OUTPUT_DIR/rounds/round-NNNNNN/, labelled with `diffalign label`


def write_round(path: Path, entry: dict) -> None:
    """Set round `entry["round"]`'s line of the log at `path`, dropping the lines of that round and later ones
    (what a resumed run redoes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = [line for line in read_rounds(path) if line["round"] < entry["round"]]
    atomic_write_text(path, "".join(json.dumps(line) + "\n" for line in kept + [entry]))


def read_rounds(path: Path) -> list[dict]:
    """The lines of the log at `path` (none when there is no log); a line that is not a round's JSON object
    raises ValueError naming the file and the line."""
    if not path.is_file():
        return []
    entries = []
    for where, _, line in read_jsonl(path):
        if not isinstance(line, dict) or not isinstance(line.get("round"), int):
            raise ValueError(f"{where}: not a round's line (a JSON object with an integer \"round\"); fix or "
                             f"delete that line")
        entries.append(line)
    return entries


def reward_part_curves(entries: list[dict]) -> dict[str, tuple[list[int], np.ndarray, float, float]]:
    """Each reward's curve of a run judged by several (its `reward/NAME/mean` and `/std` per round) on one scale:
    the change of its mean since its first scored round, in units of that round's std (the first positive std
    of a later round if it is 0; raw when none is). By name: (rounds, change, first mean, last mean)."""
    curves = {}
    names = [key[len("reward/"):-len("/mean")] for key in dict.fromkeys(k for e in entries for k in e)
             if key.startswith("reward/") and key.endswith("/mean")]
    for name in names:
        rows = [(e["round"], e[f"reward/{name}/mean"], e.get(f"reward/{name}/std", 0.0)) for e in entries
                if f"reward/{name}/mean" in e]
        means = np.array([mean for _, mean, _ in rows], dtype=float)
        scored = np.flatnonzero(~np.isnan(means))
        if not len(scored):
            continue
        stds = [std for _, _, std in rows[scored[0]:] if std is not None and np.isfinite(std) and std > 0]
        first = means[scored[0]]
        curves[name] = ([r for r, _, _ in rows], (means - first) / (stds[0] if stds else 1.0), float(first),
                        float(means[scored[-1]]))
    return curves


def plot_rounds(log: Path) -> Path | None:
    """Draw `rounds.jsonl` (mean reward with its spread, the win rate against the base and, with several rewards,
    each reward's change on one scale (`reward_part_curves`), per round) as `rounds.png` beside it; None when
    there is no log."""
    if not log.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = read_rounds(log)
    rounds = [e["round"] for e in entries]
    mean = np.array([e["reward_mean"] for e in entries])
    std = np.array([e["reward_std"] for e in entries])
    curves = reward_part_curves(entries)
    fig, axes = plt.subplots(1, 3 if curves else 2, figsize=(15 if curves else 10, 3.6))
    axes[0].plot(rounds, mean, label="mean reward")
    axes[0].fill_between(rounds, mean - std, mean + std, alpha=0.25, label="± 1 std")
    axes[0].set(xlabel="round", ylabel="reward", title="reward of the round's samples")
    axes[0].legend()
    draw_gold(axes[0], entries)  # the reward-hacking monitor's gold score, when it ran
    wins = [(e["round"], e["win_rate_vs_base"]) for e in entries if e.get("win_rate_vs_base") is not None]
    if wins:
        axes[1].plot(*zip(*wins), color="tab:green")
        axes[1].axhline(0.5, color="grey", linestyle=":")
        axes[1].set(ylim=(0, 1))
    axes[1].set(xlabel="round", ylabel="share of prompts", title="per-prompt win rate against the base")
    if curves:
        for name, (x, change, first, last) in curves.items():
            axes[2].plot(x, change, label=f"{name} ({first:.4g} -> {last:.4g})")
        axes[2].axhline(0.0, color="grey", linestyle=":")
        axes[2].set(xlabel="round", ylabel="change of the mean / first round's std",
                    title="each reward since the first round")
        axes[2].legend(fontsize="small")
    fig.tight_layout()
    out = log.with_suffix(".png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out

"""The per-round log of an online run: OUTPUT_DIR/rounds.jsonl, plotted in rounds.png at the end.

One JSON line per round, written when its training ends: the reward's mean and spread, the advantages'
spread, the win rate against the base model (when compared), the means of the method's metrics over the
round's micro-steps (ratio, clip fraction, approximate KL, ...) and the round's time split into sample /
reward / train seconds. A resumed run rewrites the lines of the rounds from its checkpoint on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...files import atomic_write_text, read_jsonl

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


def plot_rounds(log: Path) -> Path | None:
    """Draw `rounds.jsonl` (mean reward with its spread, and the win rate against the base, per round) as
    `rounds.png` beside it; None when there is no log."""
    if not log.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = read_rounds(log)
    rounds = [e["round"] for e in entries]
    mean = np.array([e["reward_mean"] for e in entries])
    std = np.array([e["reward_std"] for e in entries])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(rounds, mean, label="mean reward")
    axes[0].fill_between(rounds, mean - std, mean + std, alpha=0.25, label="± 1 std")
    axes[0].set(xlabel="round", ylabel="reward", title="reward of the round's samples")
    axes[0].legend()
    wins = [(e["round"], e["win_rate_vs_base"]) for e in entries if e.get("win_rate_vs_base") is not None]
    if wins:
        axes[1].plot(*zip(*wins), color="tab:green")
        axes[1].axhline(0.5, color="grey", linestyle=":")
        axes[1].set(ylim=(0, 1))
    axes[1].set(xlabel="round", ylabel="share of prompts", title="per-prompt win rate against the base")
    fig.tight_layout()
    out = log.with_suffix(".png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out

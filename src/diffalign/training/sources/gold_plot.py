"""The reward-hacking monitor's curves on rounds.png: the gold score of each evaluation beside the training reward
(on the reward's axis when both read on one scale, else on a second y-axis), with the training reward each
evaluation compared (the mean of the rounds since the one before: smoother than a round's), the best gold score and
the warnings."""

from __future__ import annotations

import math
from collections.abc import Sequence

GOLD_COLOUR = "tab:red"


def gold_points(entries: Sequence[dict]) -> list[tuple[float, float, float]]:
    """(round, gold score, training reward compared) of every evaluation in the lines of rounds.jsonl, the final
    weights' last."""
    evaluations = [e for e in entries if e.get("gold") is not None]
    evaluations += [e["final_evaluation"] for e in entries if isinstance(e.get("final_evaluation"), dict)
                    and e["final_evaluation"].get("gold") is not None]
    return [(e["round"], e["gold"], e.get("monitor_reward", math.nan)) for e in evaluations]


def warning_rounds(entries: Sequence[dict]) -> list[float]:
    """The rounds of the evaluations that warned of reward hacking."""
    rounds = [e["round"] for e in entries if e.get("monitor_warning")]
    finals = [e["final_evaluation"] for e in entries if isinstance(e.get("final_evaluation"), dict)]
    return rounds + [f["round"] for f in finals if f.get("monitor_warning")]


def same_scale(a: Sequence[float], b: Sequence[float], ratio: float = 10.0) -> bool:
    """Whether two series read well on one axis: the range they span together is at most `ratio` times the range
    of each one (of the wider one when the other is a single value), so neither would be drawn as a flat line (NaNs
    ignored; an empty series fits any)."""
    a = [x for x in a if x is not None and math.isfinite(x)]
    b = [x for x in b if x is not None and math.isfinite(x)]
    if not a or not b:
        return True
    union = max(max(a), max(b)) - min(min(a), min(b))
    spans = sorted([max(a) - min(a), max(b) - min(b)])
    narrow = spans[0] or spans[1]
    return union <= ratio * narrow or union == 0


def draw_gold(axis, entries: Sequence[dict], reward_key: str = "reward_mean") -> None:
    """Draw the gold scores of `entries` on the matplotlib `axis` that holds the training reward (or on a second
    y-axis beside it), mark the best one and the warnings, and give the axis one legend for both."""
    points = gold_points(entries)
    if not points:
        return
    rewards = [e.get(reward_key) for e in entries]
    target = axis if same_scale(rewards, [g for _, g, _ in points]) else axis.twinx()
    x, gold, compared = zip(*points)
    axis.plot(x, compared, marker="s", markersize=4, linestyle="--", color="tab:blue",
              label="training reward since the evaluation before")
    target.plot(x, gold, marker="o", color=GOLD_COLOUR, label="gold score (held-out prompts)")
    finite = [(g, r) for r, g, _ in points if g is not None and math.isfinite(g)]
    if finite:
        best, best_round = max(finite, key=lambda p: (p[0], -p[1]))
        target.plot([best_round], [best], marker="*", markersize=14, color=GOLD_COLOUR, linestyle="none",
                    label=f"best gold {best:.4g} (round {best_round})")
    for n, round_ in enumerate(warning_rounds(entries)):
        target.axvline(round_, color=GOLD_COLOUR, linestyle="--", alpha=0.6,
                     label="reward-hacking warning" if n == 0 else None)
    if target is not axis:
        target.set_ylabel("gold score", color=GOLD_COLOUR)
    handles, labels = axis.get_legend_handles_labels()
    if target is not axis:
        more = target.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    axis.set_title("training reward and gold score")
    axis.legend(handles, labels, fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)

"""Telling reward hacking from the monitor's evaluations: the training reward rising while the gold score falls.

The reward-hacking monitor (`monitor`) evaluates the policy every few rounds; each evaluation pairs the gold
score of the evaluated weights with the training reward of the rounds sampled since the evaluation before
(`Evaluation`). An evaluation is *hacked* when, against the one before it, the training reward rose and the gold
score fell, both strictly (a tie, or a NaN on either side, is no evidence of hacking and breaks the count). A
streak of `patience` hacked evaluations in a row raises one warning (`hacking_streak`); the streak has to break
before another warning can come. Everything here is a pure function of the sequence of evaluations, so a resumed
run, which restores that sequence, warns where the uninterrupted run would have.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of the monitor: the round whose sampling weights it evaluated (after the last round: the
    final weights), the optimizer step of those weights, the mean training reward of the rounds sampled since
    the evaluation before (NaN when there were none), the gold score (the weighted sum of the gold scorers'
    means; NaN when no image could be scored) and each gold scorer's mean score."""

    round: int
    step: int
    reward: float
    gold: float
    parts: dict[str, float] = field(default_factory=dict)
    final: bool = False  # the end-of-run evaluation of the final weights

    def as_state(self) -> dict:
        """A JSON-able dict (what a checkpoint keeps)."""
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> Evaluation:
        """The inverse of `as_state`."""
        return cls(int(state["round"]), int(state["step"]), float(state["reward"]), float(state["gold"]),
                   {str(k): float(v) for k, v in dict(state.get("parts") or {}).items()}, bool(state.get("final")))


def hacked(before: Evaluation, after: Evaluation) -> bool:
    """Whether the training reward rose and the gold score fell, both strictly, from `before` to `after` (False
    when any of the four values is NaN)."""
    return after.reward > before.reward and after.gold < before.gold


def streak_length(evaluations: Sequence[Evaluation]) -> int:
    """How many evaluations in a row, ending with the last one, were hacked against the one before each."""
    length = 0
    for i in range(len(evaluations) - 1, 0, -1):
        if not hacked(evaluations[i - 1], evaluations[i]):
            break
        length += 1
    return length


def hacking_streak(evaluations: Sequence[Evaluation], patience: int) -> tuple[int, int] | None:
    """(first, last) indices of the evaluations spanning the streak that the last evaluation completes, when it
    makes `patience` hacked evaluations in a row exactly (the first index is the evaluation the streak started
    from); None otherwise: no streak, a shorter one, or a longer one that was warned about when it reached
    `patience`."""
    if patience < 1:
        raise ValueError(f"rollout.monitor.patience must be at least 1, got {patience}")
    if streak_length(evaluations) != patience:
        return None
    last = len(evaluations) - 1
    return last - patience, last


def best_evaluation(evaluations: Sequence[Evaluation]) -> int | None:
    """The index of the evaluation with the highest gold score (the earliest of equal ones; NaN never counts), or
    None when there is none."""
    best = None
    for i, evaluation in enumerate(evaluations):
        if math.isfinite(evaluation.gold) and (best is None or evaluation.gold > evaluations[best].gold):
            best = i
    return best


def _rounds(evaluation: Evaluation) -> str:
    return f"{evaluation.round} (the final weights)" if evaluation.final else str(evaluation.round)


def warning_message(evaluations: Sequence[Evaluation], streak: tuple[int, int], best_dir: str | None,
                    stopping: bool) -> str:
    """The warning of a hacking streak (`hacking_streak`): what rose and fell over which rounds, where the best
    weights are (`best_dir`; None: not kept), and whether the run stops here."""
    first, last = evaluations[streak[0]], evaluations[streak[1]]
    count = streak[1] - streak[0]
    text = (f"reward hacking? over the last {count} evaluation{'s' if count > 1 else ''} (rounds {first.round}-"
            f"{_rounds(last)}) the training reward rose {first.reward:.4g} -> {last.reward:.4g} while the gold score "
            f"fell {first.gold:.4g} -> {last.gold:.4g}")
    best = best_evaluation(evaluations)
    if best is not None:
        b = evaluations[best]
        where = f"is kept in {best_dir}" if best_dir else "was not kept (rollout.monitor.keep_best=false)"
        text += f"; the best gold score ({b.gold:.4g}, round {_rounds(b)}, step {b.step}) {where}"
    if stopping:
        text += f"; stopping the run with the weights of round {last.round} (rollout.monitor.stop=true)"
    elif not last.final:
        text += "; rollout.monitor.stop=true would stop the run at such a warning"
    return text

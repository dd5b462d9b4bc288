"""How often a scorer agrees with human preference labels on pairs of images (Pick-a-Pic schema).

Plain agreement: among the pairs with a decided human label (`label_0` 1 or 0), a pair is agreed
when the image the scorer scores higher is the labelled winner. Human ties (`label_0` = 0.5) are
excluded and counted; equal scores (|s0 - s1| <= tolerance) are score ties, counted apart and left
out of the accuracy, as `eval` leaves ties out of its win rate among decided pairs; pairs with an image
the scorer could not score (NaN) are excluded and counted. The 95 % interval is Wilson's.

Tie-aware agreement (PickScore's protocol, Kirstain et al. 2023, `eval_preference_predictor.py`):
over every scored pair, human ties included, the scorer's preference probabilities
(p0, p1) = softmax(logit_scale * (s0, s1)) predict a tie when |p1 - p0| <= threshold, else the
more probable image; a pair earns 1 when prediction and label agree (tie = tie included), 0.5 when
one of them is a tie, else 0. The paper picks the threshold on a validation split from
0, 0.1, ..., 1 and reports the test accuracy at it. Its interval is Wilson's on the credit sum,
conservative here because half credits vary less than Bernoulli outcomes of the same mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..rewards.base import Scorer, preference_probabilities
from ..data.image_inputs import ImageItem, pair_table_items
from .scoring import DEFAULT_CHUNK, ScoreRun, format_table, score_items
from .winrate import wilson_interval

THRESHOLD_SWEEP = tuple(round(0.1 * i, 1) for i in range(11))


def _clean(values: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


def _as_arrays(scores_0: Sequence[float], scores_1: Sequence[float], label_0: Sequence[float | None]):
    s0 = np.asarray(scores_0, dtype=np.float64).reshape(-1)
    s1 = np.asarray(scores_1, dtype=np.float64).reshape(-1)
    labels = np.asarray([np.nan if v is None else v for v in label_0], dtype=np.float64).reshape(-1)
    if not len(s0) == len(s1) == len(labels):
        raise ValueError(f"{len(s0)} and {len(s1)} scores for {len(labels)} labels: give one score per image of each pair")
    return s0, s1, labels


@dataclass
class Agreement:
    """Agreement of a scorer's verdicts with decided human labels, and what was left out of it."""

    agreed: int
    disagreed: int
    score_ties: int  # decided pairs the scorer scored equally: in neither count
    label_ties: int  # human ties (label_0 = 0.5): excluded
    other_labels: int  # labels neither 0, 0.5 nor 1 (missing, soft): excluded
    unscored: int  # decided pairs with an image the scorer could not score: excluded
    tie_tolerance: float
    accuracy: float  # agreed / (agreed + disagreed); NaN when that is 0
    ci_low: float
    ci_high: float

    @property
    def n(self) -> int:
        """Pairs in the accuracy: agreed + disagreed."""
        return self.agreed + self.disagreed

    def as_dict(self) -> dict:
        """The fields and `n`, NaN as None (valid JSON)."""
        return _clean({"n": self.n, **asdict(self)})


def agreement(
    scores_0: Sequence[float], scores_1: Sequence[float], label_0: Sequence[float | None], tie_tolerance: float = 0.0
) -> Agreement:
    """Count the decided pairs where the higher score is the human winner (see the module docstring)."""
    if tie_tolerance < 0:
        raise ValueError(f"tie tolerance must be >= 0, got {tie_tolerance}")
    s0, s1, labels = _as_arrays(scores_0, scores_1, label_0)
    decided = (labels == 0) | (labels == 1)
    label_ties = int((labels == 0.5).sum())
    other = len(labels) - int(decided.sum()) - label_ties
    scored = decided & np.isfinite(s0) & np.isfinite(s1)
    diff = (s0 - s1)[scored]
    winner_is_0 = labels[scored] == 1
    tie = np.abs(diff) <= tie_tolerance
    agreed = int((~tie & ((diff > 0) == winner_is_0)).sum())
    ties = int(tie.sum())
    disagreed = len(diff) - ties - agreed
    n = agreed + disagreed
    low, high = wilson_interval(agreed, n) if n else (float("nan"), float("nan"))
    return Agreement(
        agreed=agreed,
        disagreed=disagreed,
        score_ties=ties,
        label_ties=label_ties,
        other_labels=other,
        unscored=int((decided & ~scored).sum()),
        tie_tolerance=tie_tolerance,
        accuracy=agreed / n if n else float("nan"),
        ci_low=low,
        ci_high=high,
    )


@dataclass
class TieAwareAgreement:
    """PickScore's tie-aware accuracy at one threshold (see the module docstring)."""

    threshold: float
    pairs: int  # scored pairs labelled 0, 0.5 or 1
    credit: float  # 1 per exact match, 0.5 per pair where prediction or label is a tie
    predicted_ties: int
    label_ties: int
    other_labels: int
    unscored: int
    accuracy: float  # credit / pairs; NaN when there are none
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict:
        """The fields, NaN as None (valid JSON)."""
        return _clean(asdict(self))


def tie_aware_agreement(
    scores_0: Sequence[float],
    scores_1: Sequence[float],
    label_0: Sequence[float | None],
    logit_scale: float,
    threshold: float,
) -> TieAwareAgreement:
    """Mean credit of tie-aware predictions from preference probabilities against the human labels."""
    if not 0 <= threshold <= 1:
        raise ValueError(f"tie threshold must be in [0, 1] (a difference of two probabilities), got {threshold}")
    s0, s1, labels = _as_arrays(scores_0, scores_1, label_0)
    known = (labels == 0) | (labels == 0.5) | (labels == 1)
    scored = known & np.isfinite(s0) & np.isfinite(s1)
    p = preference_probabilities(torch.from_numpy(np.stack([s0[scored], s1[scored]], axis=-1)), logit_scale).numpy()
    p0, p1 = p[:, 0], p[:, 1]
    predicted = np.where(np.abs(p1 - p0) <= threshold, 0.5, (p0 > p1).astype(np.float64))
    label = labels[scored]
    credit = np.where(predicted == label, 1.0, np.where((predicted == 0.5) | (label == 0.5), 0.5, 0.0))
    n, total = len(credit), float(credit.sum())
    low, high = wilson_interval(total, n) if n else (float("nan"), float("nan"))  # type: ignore[arg-type]
    return TieAwareAgreement(
        threshold=threshold,
        pairs=n,
        credit=total,
        predicted_ties=int((predicted == 0.5).sum()),
        label_ties=int((labels[scored] == 0.5).sum()),
        other_labels=int((~known).sum()),
        unscored=int((known & ~scored).sum()),
        accuracy=total / n if n else float("nan"),
        ci_low=low,
        ci_high=high,
    )


def parse_thresholds(text: str) -> list[float]:
    """Tie thresholds from "0.1", "0,0.1,0.2" or "sweep" (0, 0.1, ..., 1: the PickScore paper's grid)."""
    if text.strip().lower() == "sweep":
        return list(THRESHOLD_SWEEP)
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise ValueError(f"--tie-aware {text!r}: expected numbers in [0, 1] separated by commas, or 'sweep'") from error
    bad = [v for v in values if not 0 <= v <= 1]
    if not values or bad:
        raise ValueError(f"--tie-aware {text!r}: thresholds must be numbers in [0, 1] (|p1 - p0|), or 'sweep'")
    return values


def pair_items(path: str, tie_aware: bool = False) -> tuple[list[float | None], list[ImageItem]]:
    """The `label_0` of every row of the Pick-a-Pic-schema table at `path`, and the images to score: both images
    of each row with a decided label, and of the human ties when `tie_aware` (the tie-aware protocol uses them)."""
    table, items = pair_table_items(path)
    labels = [None if v is None else float(v) for v in table["label_0"]]
    wanted = {0.0, 1.0, 0.5} if tie_aware else {0.0, 1.0}
    return labels, [item for item in items if labels[item.row] in wanted]  # type: ignore[index]


def pairs_report(
    path: str, labels: Sequence[float | None], run: ScoreRun, tie_tolerance: float = 0.0, thresholds: Sequence[float] = ()
) -> dict:
    """The agreement report of a `ScoreRun` over a pair table's images (`pair_items`) against its `labels`: a
    JSON-ready dict with the dataset, row counts, per scorer its scale, `Agreement` and the `TieAwareAgreement`
    at each threshold, the images that failed, and whether the scoring was interrupted."""
    report: dict = {
        "dataset": path,
        "rows": len(labels),
        "decided": sum(label in (0.0, 1.0) for label in labels),
        "label_ties": sum(label == 0.5 for label in labels),
        "scored_rows": len({item.row for item in run.items}),
        "tie_tolerance": tie_tolerance,
        "scorers": {},
        "errors": [
            {"file": run.items[i].file, "row": run.items[i].row, "image": run.items[i].image, "error": run.error_of(i)}
            for i in run.failed
        ],
        "interrupted": run.interrupted,
    }
    for name in run.scorer_names:
        pair_scores = np.full((2, len(labels)), np.nan)
        for item, value in zip(run.items, run.scores[name]):
            pair_scores[int(item.image == "jpg_1"), item.row] = value
        result = {"logit_scale": 1.0, **run.tags[name]}
        result.update(agreement(*pair_scores, labels, tie_tolerance).as_dict())
        if thresholds:
            result["tie_aware"] = [
                tie_aware_agreement(*pair_scores, labels, result["logit_scale"], t).as_dict() for t in thresholds
            ]
        report["scorers"][name] = result
    return report


def evaluate_pairs(
    path: str,
    scorers: Sequence[Scorer],
    batch_size: int = DEFAULT_CHUNK,
    tie_tolerance: float = 0.0,
    thresholds: Sequence[float] = (),
    progress: bool = True,
) -> tuple[dict, ScoreRun]:
    """Score both images of every pair of a Pick-a-Pic-schema table and compare with the human labels.

    Only rows with a decided label are scored, plus the human ties when `thresholds` ask for the
    tie-aware protocol. Returns the report (`pairs_report`) and the `ScoreRun` behind it.
    """
    labels, items = pair_items(path, bool(thresholds))
    run = score_items(items, scorers, batch_size, progress)
    return pairs_report(path, labels, run, tie_tolerance, thresholds), run


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _interval(low: float | None, high: float | None) -> str:
    return "-" if low is None or high is None else f"{100 * low:.1f}-{100 * high:.1f} %"


def format_agreement(report: dict) -> str:
    """The report of `evaluate_pairs` as text: counts, one line per scorer, tie-aware lines when asked."""
    lines = [
        (
            f"{report['dataset']}: {report['rows']} pairs, {report['decided']} with a decided human label, "
            f"{report['label_ties']} human ties (excluded from the accuracy)"
        )
    ]
    header = ("scorer", "n", "agreed", "accuracy", "95% CI", "score ties", "unscored", "scale")
    rows = [
        (name, str(r["n"]), str(r["agreed"]), _percent(r["accuracy"]), _interval(r["ci_low"], r["ci_high"]),
         str(r["score_ties"]), str(r["unscored"]), r["scale"])
        for name, r in report["scorers"].items()
    ]
    lines.append(format_table(header, rows))
    tie_rows = [
        (name, f"{t['threshold']:g}", str(t["pairs"]), _percent(t["accuracy"]), _interval(t["ci_low"], t["ci_high"]),
         str(t["predicted_ties"]), str(t["label_ties"]))
        for name, r in report["scorers"].items()
        for t in r.get("tie_aware", ())
    ]
    if tie_rows:
        lines.append("\ntie-aware accuracy (PickScore protocol: credit 1 / 0.5 / 0, human ties included):")
        header = ("scorer", "threshold", "pairs", "accuracy", "95% CI", "predicted ties", "human ties")
        lines.append(format_table(header, tie_rows))
    ties = sum(r["score_ties"] for r in report["scorers"].values())
    if ties:
        lines.append(
            f"\n{ties} decided pair(s) got equal scores (counted apart, not in n); "
            "scoring in fp16 makes exact ties common, --dtype fp32 avoids most of those."
        )
    return "\n".join(lines)

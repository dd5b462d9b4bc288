"""The combined score of several scorers, and the preference probability it gives.

The combined score is a weighted sum of the scorers' raw scores. With one scorer the weight defaults
to 1 (the combined score is that scorer's score, in its unit) and its `logit_scale` turns a score
difference into a preference logit. With several scorers each weight defaults to that scorer's
`logit_scale`, so the sum is in Bradley-Terry logits (each scorer a preference model of its own,
multiplied together) and the combined logit scale is 1; given weights are used as they are, in
logits per unit of each scorer. Raw rather than z-normalised scores: z-normalising needs statistics
of the whole data set, which would make a prompt's pairs depend on the other prompts and on how far
an interrupted run got.

`pref_prob_0` = P(image 0 preferred) = sigmoid(combined_logit_scale x (score_0 - score_1)) is the
Bradley-Terry preference probability of that combined score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..rewards.base import Scorer, preference_probabilities

# How dataset cards describe the columns these jobs add.
COMBINED_SCORE_NOTE = "sum of weight x score over the scorers (raw scores); score_0/score_1"
SCORE_COLUMNS_DOC = (
    "`score_<scorer>_0/1` (each scorer), `score_0/1` (combined), `pref_prob_0` (P(image 0 preferred) = "
    "sigmoid(combined_logit_scale x (score_0 - score_1)), the Bradley-Terry preference probability of the "
    "combined score)"
)


def resolve_weights(
    names: Sequence[str], logit_scales: Sequence[float], weights: Sequence[float] | None = None
) -> tuple[list[float], float]:
    """Each scorer's weight in the combined score and the combined score's logit scale (module docstring)."""
    if weights is not None:
        if len(weights) != len(names):
            raise ValueError(f"--weights has {len(weights)} value(s) for {len(names)} scorer(s) ({', '.join(names)})")
        weights = [float(w) for w in weights]
    if len(names) == 1:
        return (weights or [1.0]), float(logit_scales[0])
    return (weights or [float(s) for s in logit_scales]), 1.0


def record_scorers(state: dict, scorers: Sequence[Scorer], weights: Sequence[float] | None) -> tuple[dict[str, float], float]:
    """Resolve the weights of `scorers` and note in `state` (a job's progress) each scorer's scale,
    logit scale and weight and the combined logit scale; returns (weight by scorer name, combined logit scale)."""
    names = [s.name for s in scorers]
    resolved, logit_scale = resolve_weights(names, [getattr(s, "logit_scale", 1.0) for s in scorers], weights)
    state["scorers"] = {
        s.name: {"scale": str(getattr(s, "scale", "")), "logit_scale": float(getattr(s, "logit_scale", 1.0)), "weight": w}
        for s, w in zip(scorers, resolved)
    }
    state["combined_logit_scale"] = logit_scale
    return dict(zip(names, resolved)), logit_scale


def combine_scores(scores: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """The weighted sum of the scorers' scores, image by image (NaN where any scorer failed)."""
    total = None
    for name, weight in weights.items():
        part = weight * np.asarray(scores[name], dtype=np.float64)
        total = part if total is None else total + part
    if total is None:
        raise ValueError("no scorer to combine")
    return total


def preference_of_first(combined_0: np.ndarray, combined_1: np.ndarray, logit_scale: float) -> np.ndarray:
    """P(image 0 preferred) = sigmoid(logit_scale * (s_0 - s_1)), the Bradley-Terry probability: the
    two-candidate case of `rewards.base.preference_probabilities`."""
    stacked = torch.as_tensor(np.stack([combined_0, combined_1], axis=-1), dtype=torch.float64)
    return preference_probabilities(stacked, logit_scale)[..., 0].numpy()

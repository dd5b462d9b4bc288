"""Reward scorers: one interface (`score(images, prompts) -> tensor`), a registry by name, and batch
scoring that isolates bad images (`score_in_batches`)."""

from . import shapes  # noqa: F401  (importing it registers "shapes")
from .base import register_lazy

for _name, _target in {
    "pickscore": "diffalign.rewards.pickscore:PickScore",
    "hpsv2": "diffalign.rewards.hps:hpsv2",
    "hpsv2.1": "diffalign.rewards.hps:hpsv2_1",
    "clip": "diffalign.rewards.clip_score:ClipScore",
    "aesthetic": "diffalign.rewards.aesthetic:AestheticScore",
    "imagereward": "diffalign.rewards.imagereward:ImageRewardScorer",
}.items():
    register_lazy(_name, _target)

from .base import (
    Scorer,
    available_scorers,
    build_scorer,
    preference_probabilities,
    register_scorer,
    resolve_device,
    resolve_dtype,
    scorer_factory,
    to_float_images,
    to_pil_images,
)
from .batch import BatchScores, ScoreFailure, ScorerFailure, score_in_batches

__all__ = [
    "BatchScores",
    "ScoreFailure",
    "Scorer",
    "ScorerFailure",
    "available_scorers",
    "build_scorer",
    "preference_probabilities",
    "register_scorer",
    "resolve_device",
    "resolve_dtype",
    "score_in_batches",
    "scorer_factory",
    "to_float_images",
    "to_pil_images",
]

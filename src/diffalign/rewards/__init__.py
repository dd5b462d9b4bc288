"""Reward scorers: one interface (`score(images, prompts) -> tensor`) and a registry by name."""

from . import shapes  # noqa: F401  (registers "shapes")
from .base import Scorer, available_scorers, build_scorer, register_scorer, to_float_images

__all__ = ["Scorer", "available_scorers", "build_scorer", "register_scorer", "to_float_images"]

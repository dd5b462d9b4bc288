"""Prompt lists as plain strings, for callers that need no categories: see `prompt_sets` for the full API."""

from __future__ import annotations

from .prompt_sets import PROMPT_KEYS, load_prompts

__all__ = ["PROMPT_KEYS", "load_prompts"]

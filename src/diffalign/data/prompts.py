"""Training prompts of online methods: a text file (one prompt per line) or the distinct captions of a pair table."""

from __future__ import annotations

from ..paths import resolve_local
from .pairs import load_pair_table


def read_training_prompts(source: str) -> list[str]:
    """The prompts of `source`: a .txt file's non-empty lines, or a pair table's (any `data.path` form)
    distinct non-empty captions in first-seen order. An empty result is an error naming the source."""
    local = resolve_local(source)
    if local is not None and local.suffix == ".txt":
        if not local.is_file():
            raise FileNotFoundError(f"rollout.prompts {source!r}: no such file")
        prompts = [line.strip() for line in local.read_text().splitlines() if line.strip()]
    else:
        try:
            table = load_pair_table(source)
        except (FileNotFoundError, ValueError) as error:
            raise ValueError(
                f"rollout.prompts {source!r}: expected a .txt file (one prompt per line) or a pair table ({error})"
            ) from error
        prompts = list(dict.fromkeys(c for c in table.select_columns(["caption"])["caption"] if c))
    if not prompts:
        raise ValueError(f"rollout.prompts {source!r}: no prompts found")
    return prompts

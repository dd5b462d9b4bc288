"""AI feedback: a registered scorer re-decides the winner of every preference pair.

Diffusion-DPO's AI-feedback variant replaces the human labels of Pick-a-Pic by the verdict of a
reward model: each pair's two images are scored against the caption and the higher score wins;
pairs whose scores differ by at most a tolerance become ties (0.5/0.5), which `decided_pairs` drops.
The scores stay in the table as `score_0`/`score_1`, the columns `diffalign relabel` writes too.

Scoring a large table is expensive, so `make_relabeller` keeps the scores in
`<cache_dir>/relabel/<scorer>-<hash>.safetensors` (float32 `score_0`, `score_1`) and a later run
with the same data and scorer reuses them without building the scorer. The tie tolerance is applied
after loading, so changing it does not invalidate the cache. (The cache has always named its tensors
`score_0`/`score_1`, so caches written while the table columns were `ai_score_0/1` are still read.)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
import torch

from ..files import atomic_save
from ..rewards import build_scorer
from ..rewards.base import Scorer
from ..rewards.batch import score_in_batches
from .pair_images import PairImages

Relabel = Callable[[datasets.Dataset, str], datasets.Dataset]

# The scores that decided the labels, under the names `diffalign relabel` and `diffalign pairs` use too.
SCORE_COLUMNS = ("score_0", "score_1")
# Their earlier name: dropped from a table being relabelled, so that no table holds both.
LEGACY_SCORE_COLUMNS = ("ai_score_0", "ai_score_1")


def score_pairs(
    table: datasets.Dataset,
    scorer: Scorer,
    batch_size: int = 64,
    progress: bool = True,
    source: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """Score `jpg_0` and `jpg_1` of every row against the row's caption, `batch_size` rows per step
    (`rewards.batch.score_in_batches`).

    Returns two float64 arrays of length `len(table)`. Every pair must be scored (its label depends
    on both scores): an undecodable image or a failed or non-finite score stops the scoring after its
    batch with a ValueError naming the row at fault (prefixed by `source`, e.g. the data path).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    images = PairImages(table, source)
    captions = [caption or "" for caption in table["caption"]]
    result = score_in_batches(
        scorer,
        images,
        [captions[i // 2] for i in range(len(images))],
        batch_size=2 * batch_size,
        progress=progress,
        desc=f"scoring pairs ({scorer.name})",
        stop_after_failure=True,
    )
    if result.failures:
        failure = result.failures[0]
        # a loading error names its row itself (decode_image); a scorer's error is located here
        raise ValueError(failure.reason if failure.scorer is None else f"{images.where(failure.index)}: {failure.reason}")
    # float32, as the cache keeps them: a computed and a cached run decide the same labels
    scores = result.values().float().double().numpy().reshape(len(table), 2)
    return scores[:, 0].copy(), scores[:, 1].copy()


def decide_labels(scores_0: np.ndarray, scores_1: np.ndarray, tie_tolerance: float) -> np.ndarray:
    """`label_0` decided by the scores: 1 or 0 for the higher score, 0.5 when |s0 - s1| <= tie_tolerance."""
    if tie_tolerance < 0:
        raise ValueError(f"tie_tolerance must be >= 0, got {tie_tolerance}")
    scores_0 = np.asarray(scores_0, dtype=np.float64).reshape(-1)
    scores_1 = np.asarray(scores_1, dtype=np.float64).reshape(-1)
    tie = np.abs(scores_0 - scores_1) <= tie_tolerance
    return np.where(tie, 0.5, (scores_0 > scores_1).astype(np.float64))


def label_stats(original_label_0: np.ndarray, label_0: np.ndarray) -> dict:
    """How new labels compare with the original ones: `rows`, new `ties`, `decided`, `flipped` (decided
    both before and after, but the other way), `ties_decided` (source ties or undecided rows that the
    new labels decide) and `agreement` (the fraction of pairs decided before and after that keep their
    winner; None when there are none)."""
    original = np.asarray(original_label_0, dtype=np.float64).reshape(-1)
    label_0 = np.asarray(label_0, dtype=np.float64).reshape(-1)
    tie = label_0 == 0.5
    was_decided = np.isin(original, (0.0, 1.0))
    both = was_decided & ~tie
    flipped = int((both & (original != label_0)).sum())
    compared = int(both.sum())
    return {
        "rows": len(label_0),
        "decided": int((~tie).sum()),
        "ties": int(tie.sum()),
        "flipped": flipped,
        "ties_decided": int((~was_decided & ~tie).sum()),
        "agreement": (compared - flipped) / compared if compared else None,
    }


def relabel_table(
    table: datasets.Dataset, scores_0: np.ndarray, scores_1: np.ndarray, tie_tolerance: float
) -> tuple[datasets.Dataset, dict]:
    """Replace `label_0`/`label_1` by the scores' verdict and the score columns `score_0`/`score_1` by the scores.

    The higher score wins (1/0 or 0/1); |s0 - s1| <= tie_tolerance is a tie (0.5/0.5). The stats
    are `label_stats` of the original and the new labels.
    """
    scores_0 = np.asarray(scores_0, dtype=np.float64).reshape(-1)
    scores_1 = np.asarray(scores_1, dtype=np.float64).reshape(-1)
    if not len(scores_0) == len(scores_1) == len(table):
        raise ValueError(f"{len(scores_0)} and {len(scores_1)} scores for a table of {len(table)} rows")
    label_0 = decide_labels(scores_0, scores_1, tie_tolerance)
    stats = label_stats(np.asarray(table["label_0"], dtype=np.float64), label_0)

    replaced = [c for c in ("label_0", "label_1", *SCORE_COLUMNS, *LEGACY_SCORE_COLUMNS) if c in table.column_names]
    out = table.remove_columns(replaced)
    for name, values in (
        ("label_0", label_0),
        ("label_1", 1.0 - label_0),
        (SCORE_COLUMNS[0], scores_0.astype(np.float32)),
        (SCORE_COLUMNS[1], scores_1.astype(np.float32)),
    ):
        out = out.add_column(name, values.tolist())
    return out, stats


def scorer_file_digest(scorer_name: str) -> str:
    """For a scorer named by a file reference (`path/to/file.py:NAME`), "\0" and the hash of the file's bytes, so
    that editing the file invalidates scores cached with it; empty for every other name."""
    path = Path(scorer_name.rsplit(":", 1)[0])
    if not scorer_name.startswith("remote:") and path.suffix == ".py" and path.is_file():
        return "\0" + hashlib.sha256(path.read_bytes()).hexdigest()
    return ""


def relabel_cache_path(cache_dir: str | Path, scorer_name: str, source_key: str, rows: int) -> Path:
    """Where `make_relabeller` keeps the scores of a table: `<cache_dir>/relabel/<scorer>-<hash>.safetensors`."""
    digest = hashlib.sha256(f"{source_key}\0{scorer_name}\0{rows}{scorer_file_digest(scorer_name)}".encode()).hexdigest()[:16]
    safe_name = re.sub(r"[^A-Za-z0-9._-]+", "_", scorer_name)
    return Path(cache_dir) / "relabel" / f"{safe_name}-{digest}.safetensors"


def _load_cached(path: Path, rows: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached scores if the file holds two float vectors of `rows` values, else None."""
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
        score_0, score_1 = tensors["score_0"], tensors["score_1"]
    except Exception as error:  # a truncated or foreign file: recompute
        print(f"relabel: ignoring unreadable score cache {path} ({error})", flush=True)
        return None
    if score_0.shape != (rows,) or score_1.shape != (rows,):
        print(f"relabel: ignoring score cache {path} (not {rows} scores per image)", flush=True)
        return None
    return score_0.double().numpy(), score_1.double().numpy()


def _save_cached(path: Path, scores_0: np.ndarray, scores_1: np.ndarray, metadata: dict[str, str]) -> None:
    """Write the scores as float32 safetensors, atomically (a rename over any older file)."""
    from safetensors.torch import save_file

    tensors = {
        "score_0": torch.from_numpy(np.ascontiguousarray(scores_0, dtype=np.float32)),
        "score_1": torch.from_numpy(np.ascontiguousarray(scores_1, dtype=np.float32)),
    }

    def write(tmp_dir: Path) -> Path:
        save_file(tensors, str(tmp_dir / path.name), metadata=metadata)
        return tmp_dir / path.name

    atomic_save(path.parent, write)


def format_stats(scorer_name: str, stats: dict) -> str:
    """One line summing up a relabelling."""
    agreement = "n/a" if stats["agreement"] is None else f"{stats['agreement']:.1%}"
    return (
        f"relabel with {scorer_name}: {stats['rows']} pairs, {stats['decided']} decided, {stats['ties']} ties, "
        f"{stats['flipped']} flipped, {stats['ties_decided']} source ties decided, "
        f"agreement with the original labels {agreement}"
    )


class Relabeller:
    """`relabel(table, source_key)`: the table relabelled by a scorer, scores cached on disk.

    `source_key` must identify the table's content (path, split, selection...): it names the cache
    file together with the scorer name and the number of rows. `last_stats` holds the stats of
    the latest call, `last_cache_hit` whether its scores came from the cache.
    """

    def __init__(
        self,
        scorer_name: str,
        tie_tolerance: float,
        cache_dir: str | Path,
        device: str | None = None,
        batch_size: int = 64,
        progress: bool = True,
    ) -> None:
        if tie_tolerance < 0:
            raise ValueError(f"relabel tie tolerance must be >= 0, got {tie_tolerance}")
        self.scorer_name = scorer_name
        self.tie_tolerance = tie_tolerance
        self.cache_dir = Path(cache_dir)
        self.device = device
        self.batch_size = batch_size
        self.progress = progress
        self.last_stats: dict | None = None
        self.last_cache_hit: bool | None = None

    def __call__(self, table: datasets.Dataset, source_key: str) -> datasets.Dataset:
        """Score (or load the cached scores of) every pair of `table` and return it relabelled."""
        path = relabel_cache_path(self.cache_dir, self.scorer_name, source_key, len(table))
        cached = _load_cached(path, len(table))
        self.last_cache_hit = cached is not None
        if cached is None:
            scorer = build_scorer(self.scorer_name, device=self.device)
            scores = score_pairs(table, scorer, self.batch_size, self.progress, source=source_key)
            del scorer
            _save_cached(
                path, *scores, {"source_key": source_key, "scorer": self.scorer_name, "rows": str(len(table))}
            )
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        else:
            scores = cached
        relabelled, self.last_stats = relabel_table(table, *scores, self.tie_tolerance)
        origin = "cached" if self.last_cache_hit else "computed"
        print(f"{format_stats(self.scorer_name, self.last_stats)} (scores {origin}: {path})", flush=True)
        return relabelled


def make_relabeller(
    scorer_name: str,
    tie_tolerance: float,
    cache_dir: str | Path,
    device: str | None = None,
    batch_size: int = 64,
) -> Relabeller:
    """A `relabel(table, source_key) -> table` callable for `PreferencePairs(..., relabel=...)`.

    The scorer registered as `scorer_name` is built (on `device`) only when the scores of a table
    are not cached under `cache_dir/relabel/`; it is released once they are written.
    """
    return Relabeller(scorer_name, tie_tolerance, cache_dir, device=device, batch_size=batch_size)

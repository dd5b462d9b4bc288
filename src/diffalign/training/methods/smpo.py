"""SmPO-Diffusion: InPO on ReNoise-inverted latents, each pair weighted by a smoothed label from a scorer.

The pairs' scores are the table's `score_0`/`score_1` columns (written by `diffalign relabel`, or by
`data.relabel_with=NAME`, which computes them once and caches them). Before the pairs are filtered, the method
re-decides every decided pair by its scores (the higher score wins, as the official preprocessing) and writes
its weight γ(2p − 1) into the table's `weight` column (`objectives.smpo.smoothed_weight`), which every reader
(table, stream, latent cache) carries into `batch.weight` and the loss. Human ties stay ties (dropped).
The normalisation bounds are `objective.score_bounds`, or the minimum and maximum score of the decided rows
(recorded in OUTPUT_DIR/score_bounds.json); a stream, which has no "all rows" up front, needs them set.

Fixes of the official code (JaydenLyh/SmPO): each pair gets its own weight (the official loss weights the
whole batch by its first pair's label) and every pair is inverted to its own timestep; the paper's score
bounds are an option, not a constant, since they fit raw PickScore cosines only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from ...config.objectives import SmPOConfig
from ...data.record import PairBatch
from ...files import atomic_write_text
from ...objectives import ObjectiveOutput
from ...objectives.smpo import smoothed_weight, smpo_loss
from ..randomness import BatchRandom
from .base import TrainableModel
from .inpo import InPO

SCORES = ("score_0", "score_1")
BOUNDS_FILE = "score_bounds.json"


class SmPO(InPO):
    """SmPO on offline pairs with per-pair scores, against the initial model."""

    cfg: SmPOConfig

    def __init__(self, cfg: SmPOConfig) -> None:
        super().__init__(cfg)
        self.bounds: tuple[float, float] | None = None
        if cfg.score_bounds is not None:
            if len(cfg.score_bounds) != 2 or not cfg.score_bounds[1] > cfg.score_bounds[0]:
                raise ValueError(f"objective.score_bounds={cfg.score_bounds}: expected [low, high] with high > low")
            self.bounds = (float(cfg.score_bounds[0]), float(cfg.score_bounds[1]))

    def _weights(self, score_0: np.ndarray, score_1: np.ndarray) -> np.ndarray:
        assert self.bounds is not None
        gap = torch.from_numpy(np.abs(score_0 - score_1).astype(np.float64))
        return smoothed_weight(gap, torch.zeros_like(gap), *self.bounds, gamma=self.cfg.gamma).numpy()

    def transform_table(self, table: datasets.Dataset, run: Any) -> datasets.Dataset:
        """The table with its decided pairs re-decided by their scores and weighted (module docstring)."""
        missing = [c for c in SCORES if c not in table.column_names]
        if missing:
            raise ValueError(
                f"{run.data.path}: SmPO needs each pair's scores, columns {list(SCORES)} (missing {missing}): set "
                f"data.relabel_with=pickscore (scores computed once and cached) or write them with `diffalign relabel`"
            )
        score_0, score_1 = (np.asarray(table[c], dtype=np.float64) for c in SCORES)
        label = np.asarray(table["label_0"], dtype=np.float64)
        decided = (label == 0) | (label == 1)
        bad = np.flatnonzero(decided & ~(np.isfinite(score_0) & np.isfinite(score_1)))
        if len(bad):
            raise ValueError(f"{run.data.path} row {int(bad[0])}: score_0/score_1 not finite ({len(bad)} such rows)")
        if self.bounds is None:
            scores = np.concatenate([score_0[decided], score_1[decided]])
            if scores.size == 0 or scores.max() <= scores.min():
                raise ValueError(f"{run.data.path}: the decided pairs' scores span no range; set objective.score_bounds")
            self.bounds = (float(scores.min()), float(scores.max()))
            out = Path(run.train.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / BOUNDS_FILE, json.dumps({"low": self.bounds[0], "high": self.bounds[1],
                                                             "source": "decided pairs of the training data"}) + "\n")
        new_label = np.where(decided, (score_0 >= score_1).astype(np.float64), label)
        weight = np.where(decided, self._weights(score_0, score_1), 0.0)
        table = table.remove_columns([c for c in ("label_0", "label_1", "weight") if c in table.column_names])
        return (table.add_column("label_0", new_label.tolist()).add_column("label_1", (1 - new_label).tolist())
                .add_column("weight", weight.tolist()))

    def transform_row(self, row: dict) -> dict:
        """One streamed row re-decided and weighted like `transform_table` (needs objective.score_bounds)."""
        if self.bounds is None:
            raise ValueError("streamed data has no bounds up front: set objective.score_bounds=[low, high]")
        if row.get("label_0") not in (0, 1) or any(row.get(c) is None or not math.isfinite(row[c]) for c in SCORES):
            return row
        score_0, score_1 = np.array([row["score_0"]]), np.array([row["score_1"]])
        label = 1.0 if row["score_0"] >= row["score_1"] else 0.0
        return {**row, "label_0": label, "label_1": 1 - label, "weight": float(self._weights(score_0, score_1)[0])}

    def __call__(self, model: TrainableModel, batch: PairBatch, rand: BatchRandom) -> ObjectiveOutput:
        if batch.weight is None:
            raise ValueError("SmPO's pairs carry no weight: the table transform did not run (see training.methods.smpo)")
        n = len(batch)
        err, ref_err = self.errors(model, batch, rand)
        return smpo_loss(err[:n], err[n:], ref_err[:n], ref_err[n:], self.cfg.beta, batch.weight)

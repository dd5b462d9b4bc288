"""Diffusion-KTO: every image rated desirable or undesirable on its own, against the initial model.

`objective.rows` says what a row of the data is:

- `pairs`: a preference pair (any pair table); its winner is desirable and its loser undesirable, each
  noised with its own noise and timestep, as two unpaired images (the official code's Pick-a-Pic use);
- `rated`: one image (`jpg_0`, `caption`) and its rating `label_0` (1 desirable, 0 undesirable). The
  table transform turns the rating into the row's `weight` (+1 / −1) and serves the image as the row's
  winner, so the winners-only readers (table, stream, latent cache) read rated rows unchanged.
"""

from __future__ import annotations

from typing import Any

import datasets
import torch

from ...config.objectives import KTOConfig
from ...data.pairs import has_rejected
from ...data.record import WEIGHT_COLUMN, PairBatch
from ...objectives import ObjectiveOutput, kto_loss
from ..randomness import BatchRandom
from ..sources.offline import OfflinePairs, OfflineWinners
from .base import Method, NoisedPair, TrainableModel, noise_pair, prediction_errors, sample_noise_and_timesteps

RATINGS = (0, 1)


class KTO(Method):
    """Diffusion-KTO on pairs split into a desirable and an undesirable image, or on rated single images."""

    reference = "base"
    precomputable_reference = True

    def __init__(self, cfg: KTOConfig) -> None:
        super().__init__(cfg)
        self.source = OfflineWinners if cfg.rows == "rated" else OfflinePairs  # type: ignore[misc]

    def transform_table(self, table: datasets.Dataset, run: Any) -> datasets.Dataset:
        """Rated rows: each rating moved into `weight` (+1 desirable, −1 undesirable) and the image made the
        row's winner; a rating other than 0 or 1 is an error naming the rows. Pairs: unchanged."""
        del run
        if self.cfg.rows != "rated":
            return table
        if has_rejected(table):
            raise ValueError("objective.rows=rated reads one image per row (jpg_0, caption, label_0 = 1 desirable / "
                             "0 undesirable), but this table holds pairs (jpg_1): use objective.rows=pairs")
        ratings = table["label_0"]
        bad = [i for i, value in enumerate(ratings) if value not in RATINGS]
        if bad:
            shown = ", ".join(f"row {i} ({ratings[i]!r})" for i in bad[:5])
            raise ValueError(f"{len(bad)} rated row(s) with a label_0 that is not 1 (desirable) or 0 (undesirable): "
                             f"{shown}{' ...' if len(bad) > 5 else ''}")
        table = table.remove_columns([c for c in ("label_0", "label_1", WEIGHT_COLUMN) if c in table.column_names])
        table = table.add_column(WEIGHT_COLUMN, [1.0 if value == 1 else -1.0 for value in ratings])
        return table.add_column("label_0", [1.0] * len(table)).add_column("label_1", [0.0] * len(table))

    def transform_row(self, row: dict) -> dict:
        """`transform_table` for one streamed row."""
        if self.cfg.rows != "rated":
            return row
        if row.get("jpg_1"):
            raise ValueError("objective.rows=rated: a streamed row holds a pair (jpg_1): use objective.rows=pairs")
        if row.get("label_0") not in RATINGS:
            raise ValueError(f"a rated row's label_0 is {row.get('label_0')!r}, not 1 (desirable) or 0 (undesirable)")
        return {**row, WEIGHT_COLUMN: 1.0 if row["label_0"] == 1 else -1.0, "label_0": 1.0, "label_1": 0.0}

    def reference_key(self) -> dict[str, Any]:
        return {"name": self.cfg.name, "rows": self.cfg.rows}

    def noised(self, model: TrainableModel, batch: PairBatch, rand: BatchRandom) -> NoisedPair:
        noise, t = sample_noise_and_timesteps(batch.w.latents, model.noise_scheduler, rand)
        if self.cfg.rows == "rated":
            return noise_pair(model, batch.w, None, noise, t)
        loser_noise, loser_t = sample_noise_and_timesteps(batch.w.latents, model.noise_scheduler, rand)
        return noise_pair(model, batch.w, batch.loser, noise, t, loser_noise, loser_t)

    def __call__(self, model: TrainableModel, batch: PairBatch, rand: BatchRandom) -> ObjectiveOutput:
        if self.cfg.rows == "rated":
            if batch.weight is None:
                raise ValueError("KTO's rated rows carry no rating: the table transform did not run")
            desirable = batch.weight > 0
        else:
            desirable = torch.arange(2 * len(batch)) < len(batch)
        noised = self.noised(model, batch, rand)
        err = prediction_errors(model, model.predict(noised.noisy, noised.t, **noised.kwargs), noised)
        ref_err = model.reference_errors(noised, "prediction", rand)
        c = self.cfg
        return kto_loss(err, ref_err, desirable, c.beta, c.lambda_desirable, c.lambda_undesirable)

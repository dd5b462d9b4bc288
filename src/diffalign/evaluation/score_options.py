"""The options of `diffalign score` (`evaluation.score_job` runs them): a light module, so building the command
line loads no model library."""

from __future__ import annotations

from dataclasses import dataclass

from ..config.options import (batch_size_option, device_option, dtype_option, option, out_option, progress_option,
                              scorer_options_option, scorers_option)


@dataclass
class ScoreOptions:
    """The options of `diffalign score`: what to score, with which scorers, how, and where the scores go."""

    inputs: list[str] = option([], "image files, folders, metadata or pair-table files", positional=True, nargs="*",
                               metavar="INPUT")
    scorers: list[str] = scorers_option([])
    scorer_options: list[str] = scorer_options_option()
    prompt: str | None = option(None, "the prompt of every image (overrides metadata and sidecars)", metavar="TEXT")
    pairs: str | None = option(None, "Pick-a-Pic-schema parquet file, folder of shards, glob or hub id: report each "
                               "scorer's accuracy against the human labels (human ties excluded and counted, 95%% "
                               "Wilson interval)", metavar="DATASET")
    tie_tolerance: float | None = option(None, "with --pairs: score differences up to DIFF count as score ties "
                                         "(default: exact equality)", metavar="DIFF")
    tie_aware: str | None = option(None, "with --pairs: also PickScore's tie-aware accuracy, predicting a tie when "
                                   "|p1-p0| <= T (p = softmax of logit_scale x scores; credit 1/0.5/0); "
                                   "'sweep' = 0,0.1,...,1", metavar="T[,T...]|sweep")
    device: str | None = device_option()
    dtype: str | None = dtype_option(None, "scorer", "each scorer's own, usually float16 on CUDA; float32 avoids "
                                     "float16 score ties")
    batch_size: int | None = batch_size_option(None, "images per scorer call (default: 32)")
    out: str | None = out_option("per-image scores (.csv, .json, .jsonl, .parquet; with --pairs: .json report), "
                                 "written atomically", default=None)
    progress: bool = progress_option()

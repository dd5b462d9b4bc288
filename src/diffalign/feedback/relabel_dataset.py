"""`diffalign relabel`: re-score a Pick-a-Pic-schema dataset and write it anew with the scores (and labels).

Every row's `jpg_0` and `jpg_1` are scored against its caption by each scorer (robustly, as
`diffalign score` does, through `rewards.batch.score_in_batches`: an image that cannot be decoded or
scored costs only its row, which is left out and listed). The new dataset keeps every original column
and adds `score_<scorer>_0/1`, the combined score `score_0/1` (weighted sum, see `feedback.combine`)
and `pref_prob_0` = P(image 0 preferred) = sigmoid(logit_scale x (score_0 - score_1)), the
Bradley-Terry preference probability of the combined score. With
`labels="scorer"` the labels are re-decided by the combined score (`data.relabel.decide_labels`,
ties within the tolerance become 0.5/0.5): the AI-feedback variant of Diffusion-DPO; the original
`label_0` is kept as `original_label_0`. Either way the agreement of the scorer with the original
labels is counted (`data.relabel.label_stats`).

Resumable by shard: shard n holds the rows [n x shard_size, (n+1) x shard_size) of the source that
could be scored; each shard is written atomically, then recorded (`data.resume`), and `progress.json` names the
recorded shards once every shard is done. Under `accelerate launch --num_processes N` process r scores shards
r, r+N, ... on its own device and the main process merges them in shard order: the output is one process's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.cards import write_dataset_card
from ..data.pairs import parquet_files, source_key
from ..data.relabel import decide_labels, label_stats
from ..data.resume import (merge_recorded_shards, quiet_unless_main, recorded_shards,
                           shard_records, sharded_job_state, write_shard_file)
from ..data.image_inputs import pair_table_items
from ..config.options import (MISSING, batch_size_option, check_minimums, device_option, dtype_option, not_an_option,
                              option, out_option, overwrite_option, progress_option, scorer_options_option,
                              scorers_option, shard_size_option, weights_option)
from ..evaluation.scoring import build_scorers, scorer_choice, score_items
from ..processes import Processes, current_processes, job_progress
from .combine import COMBINED_SCORE_NOTE, SCORE_COLUMNS_DOC, combine_scores, preference_of_first, record_scorers

LABEL_MODES = ("keep", "scorer")
_COUNTS = ("rows", "decided", "ties", "flipped", "ties_decided", "compared")


@dataclass
class RelabelJob:
    """What `relabel_dataset` reads, how it scores, and where it writes: the options of `diffalign relabel`."""

    source: str = option(MISSING, "Pick-a-Pic-schema parquet file, folder of shards, glob or hub id", positional=True)
    out: Path = out_option("output folder (created; a rerun resumes it)")
    scorers: list[str] = scorers_option([])
    scorer_options: dict[str, dict[str, object]] = scorer_options_option()
    weights: list[float] | None = weights_option()
    labels: str = option("keep", "keep the labels, or let the combined score decide each pair", choices=LABEL_MODES)
    flip: bool = option(False, "the same as --labels scorer")
    tie_tolerance: float = option(0.0, "with --labels scorer: combined-score differences up to this are ties "
                                  "(0: exact equality)", show_default=False)
    shard_size: int = shard_size_option()
    device: str | None = device_option()
    dtype: str | None = dtype_option(None, "scorer", "each scorer's own")
    batch_size: int = batch_size_option(32, "images per scorer call")
    overwrite: bool = overwrite_option()
    progress: bool = progress_option()
    command: str | None = not_an_option(None, "the command line, for the dataset card")

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.flip:
            self.labels, self.flip = "scorer", False
        self.scorers, self.scorer_options, self.weights = scorer_choice(
            self.scorers, self.scorer_options, self.weights, required=False, check=False)

    def check(self) -> None:
        """Raise a ValueError naming the first invalid choice."""
        scorer_choice(self.scorers, self.scorer_options)  # at least one scorer, every name registered
        if self.labels not in LABEL_MODES:
            raise ValueError(f"unknown label mode {self.labels!r}; use one of {', '.join(LABEL_MODES)}")
        if self.tie_tolerance < 0:
            raise ValueError(f"--tie-tolerance must be >= 0, got {self.tie_tolerance}")
        check_minimums(self)
        sources = {Path(f).resolve().parent for f in _local_files(self.source)} | {Path(self.source).resolve()}
        if Path(self.out).resolve() in sources:
            raise ValueError(f"--out {self.out} is the source's own folder: write the relabelled dataset elsewhere")


def _local_files(source: str) -> list[str]:
    try:
        return parquet_files(source) or []
    except FileNotFoundError:
        return []


@dataclass
class RelabelResult:
    """What `relabel_dataset` did: totals over every shard and the rows left out with their errors."""

    out: Path
    totals: dict
    errors: list[dict]
    shards: list[dict]


def totals_of(shards: list[dict]) -> dict:
    """Counts summed over the shards, `agreement` = 1 - flipped / compared (None when nothing compares)."""
    totals = {key: sum(s["stats"][key] for s in shards) for key in _COUNTS}
    totals["source_rows"] = sum(s["source_rows"][1] - s["source_rows"][0] for s in shards)
    totals["rows_left_out"] = sum(len(s["errors"]) for s in shards)
    compared = totals["compared"]
    totals["agreement"] = (compared - totals["flipped"]) / compared if compared else None
    return totals


def relabel_dataset(job: RelabelJob, processes: Processes | None = None) -> RelabelResult | None:
    """Score every row of `job.source` not yet in a shard, write the shards and the dataset card; on several
    `processes` this process scores its share of the shards, and only the main process merges them, writes the
    card and returns the result (the others return None)."""
    processes = processes or current_processes()
    job.check()
    out = Path(job.out)
    with quiet_unless_main(processes):
        table, items = pair_table_items(job.source)
    settings = {
        "source": job.source, "source_key": source_key(job.source, "train", None), "source_rows": len(table),
        "scorers": job.scorers, "scorer_options": job.scorer_options, "weights": job.weights, "labels": job.labels,
        "tie_tolerance": job.tie_tolerance, "shard_size": job.shard_size,
    }
    records = shard_records(out, settings, len(table), job.shard_size)
    state, done = sharded_job_state(processes, out, settings, job.overwrite, records)
    todo = [shard for shard in processes.share(records.chunks) if shard not in done]
    start_time = time.time()
    if todo:
        scorers = build_scorers(job.scorers, job.scorer_options, processes.device(job.device), job.dtype, job.batch_size)
        weights, logit_scale = record_scorers(state, scorers, job.weights)
    rows_done = sum(len(range(s * job.shard_size, min((s + 1) * job.shard_size, len(table)))) for s in done)
    with job_progress(processes, out, "relabel", len(table), rows_done, f"relabel ({', '.join(job.scorers)})", "pair",
                      job.progress and rows_done < len(table)) as progress:
        for shard in todo:
            start, stop = shard * job.shard_size, min((shard + 1) * job.shard_size, len(table))
            entry = _relabel_shard(job, out, shard, table, items, scorers, weights, logit_scale, start, stop)
            records.write(shard, {**entry, "scorers": state["scorers"], "combined_logit_scale": logit_scale})
            progress.update(stop - start)
    if not processes.is_main:
        return None
    entries = recorded_shards(out, state, records, processes)
    for entry in entries:  # the scorers' scales, noted by whichever process scored the shard
        state.update(scorers=entry.pop("scorers"), combined_logit_scale=entry.pop("combined_logit_scale"))
    merge_recorded_shards(out, state, entries, records)
    totals = totals_of(state["shards"])
    errors = [e for s in state["shards"] for e in s["errors"]]
    _write_card(job, out, state, totals, time.time() - start_time)
    return RelabelResult(out, totals, errors, state["shards"])


def _relabel_shard(job: RelabelJob, out: Path, shard: int, table, items, scorers, weights: dict, logit_scale: float,
                   start: int, stop: int) -> dict:
    """Score source rows [start, stop), write them as shard `shard`; what the progress file keeps of it."""
    run = score_items(items[2 * start : 2 * stop], scorers, job.batch_size, progress=False)
    if run.interrupted:
        raise KeyboardInterrupt
    n = stop - start
    scores = {name: run.scores[name].reshape(n, 2) for name in run.scorer_names}
    errors = []
    for i in run.failed:
        item = run.items[i]
        errors.append({"row": item.row, "image": item.image, "error": run.error_of(i)})
    bad = {e["row"] - start for e in errors}
    keep = np.array([r for r in range(n) if r not in bad], dtype=np.int64)
    combined = combine_scores({name: s[keep] for name, s in scores.items()}, weights)
    labels = table.select((start + keep).tolist())["label_0"] if len(keep) else []
    original = np.asarray([np.nan if v is None else v for v in labels], dtype=np.float64)
    decided = decide_labels(combined[:, 0], combined[:, 1], job.tie_tolerance)
    stats = label_stats(original, decided)
    stats["compared"] = int((np.isin(original, (0.0, 1.0)) & (decided != 0.5)).sum())

    rows = table.select((start + keep).tolist())
    columns: dict[str, list] = {}
    for name, s in scores.items():
        columns[f"score_{name}_0"], columns[f"score_{name}_1"] = s[keep, 0].tolist(), s[keep, 1].tolist()
    columns["score_0"], columns["score_1"] = combined[:, 0].tolist(), combined[:, 1].tolist()
    columns["pref_prob_0"] = preference_of_first(combined[:, 0], combined[:, 1], logit_scale).tolist()
    if job.labels == "scorer":
        columns["original_label_0"] = original.tolist()
        columns["label_0"], columns["label_1"] = decided.tolist(), (1.0 - decided).tolist()
    rows = rows.remove_columns([c for c in columns if c in rows.column_names])
    for name, values in columns.items():
        rows = rows.add_column(name, values)

    file = write_shard_file(out, shard, rows)
    return {"file": file, "rows": len(keep), "source_rows": [start, stop], "stats": stats, "errors": errors}


def format_totals(totals: dict, labels: str) -> str:
    """A summary line: rows written and left out, flips, ties and agreement with the original labels."""
    agreement = "n/a" if totals["agreement"] is None else f"{totals['agreement']:.1%}"
    verb = "flipped" if labels == "scorer" else "would flip (labels kept; --labels scorer to apply)"
    return (
        f"{totals['rows']} pairs written, {totals['rows_left_out']} left out (images that could not be scored); "
        f"scorer verdict: {totals['decided']} decided, {totals['ties']} ties, {totals['flipped']} {verb}, "
        f"{totals['ties_decided']} original ties decided; agreement with the original labels {agreement} "
        f"(of {totals['compared']} pairs decided by both)"
    )


def _write_card(job: RelabelJob, out: Path, state: dict, totals: dict, seconds: float) -> None:
    details = {
        "source": job.source,
        "scorers": state.get("scorers", {}),
        "combined_score": COMBINED_SCORE_NOTE,
        "combined_logit_scale": state.get("combined_logit_scale"),
        "labels": job.labels,
        "tie_tolerance": job.tie_tolerance,
        "complete": totals["source_rows"] == state["settings"]["source_rows"],
        **totals,
        "rows_left_out_list": [e for s in state["shards"] for e in s["errors"]][:100],
        "shards": [{k: s[k] for k in ("file", "rows", "source_rows")} for s in state["shards"]],
        "seconds_this_run": round(seconds, 1),
    }
    names = ", ".join(f"`{n}` ({i['scale']})" for n, i in details["scorers"].items())
    relabelled = (
        "The labels were re-decided by the combined score (AI feedback; score differences within "
        f"{job.tie_tolerance} are ties, 0.5/0.5); the original `label_0` is in `original_label_0`."
        if job.labels == "scorer" else "The original labels are kept."
    )
    description = (
        f"`{job.source}` re-scored by `diffalign relabel` with {names}. {relabelled}\n\n"
        f"Added columns: {SCORE_COLUMNS_DOC}. "
        "Rows with an image that could not be decoded or scored are left out and listed below."
    )
    write_dataset_card(out, "Re-scored preference pairs", description, details, job.command, tags=("ai-feedback",))

"""`diffalign captions`: a caption per image for each pair of a pair table (DCPO's Pick-Double-Caption schema).

DCPO's three ways to caption the pair (its paper's DCPO-c, -p and -h):

- `captioning`: `caption_0` and `caption_1` are what a captioner says each image shows;
- `perturbation`: the winner keeps the prompt, the loser gets a perturbation of it;
- `hybrid`: the winner's caption is what the captioner says it shows, the loser's a perturbation of that.

Perturbation and hybrid depend on which image won, so captions are written after the final labels: relabel
first (`diffalign relabel --flip`), then caption. The captions are stored by image (`caption_k` describes
`jpg_k`), so a later relabel that flips a pair keeps each caption with its image; under those two strategies
the new winner then carries the perturbed caption, and the captions should be written again. Ties are not
trained on by DCPO; they get a neutral pair of captions (perturbation: the prompt twice; hybrid: each image's
generated caption).

The new dataset keeps every column of the source, with `caption_0`/`caption_1` added (or replaced). Rows
whose image cannot be decoded, or whose caption comes back empty or fails, are left out and listed, not
fatal. Resumable by shard: shard n holds the rows [n x shard_size, (n+1) x shard_size) of the source that
could be captioned, written atomically, then recorded (`data.resume`); `progress.json` names the recorded shards
once every shard is done. Under `accelerate launch --num_processes N` process r captions shards r, r+N, ... on
its own device and the main process merges them in shard order. A shard's captions depend only on its rows, the
batch size and the seed (batches never cross a shard; a sampling perturber reseeds each call from the seed and
its first row), so N processes write what one writes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.cards import write_dataset_card
from ..data.pairs import decode_image, load_pair_table
from ..data.resume import (merge_recorded_shards, quiet_unless_main, recorded_shards,
                           shard_records, sharded_job_state, write_shard_file)
from ..processes import JobProgress, Processes, current_processes, job_progress
from .caption_job import CaptionJob
from .captioners import Captioner, Perturber, build_captioner, build_perturber

@dataclass
class CaptionResult:
    """What `caption_dataset` did: rows written, the rows left out with their errors, the shards."""

    out: Path
    rows: int
    errors: list[dict] = field(default_factory=list)
    shards: list[dict] = field(default_factory=list)


@dataclass
class _Row:
    index: int
    prompt: str
    images: list[Any]
    winner: int | None  # the column of the preferred image; None for a tie


def second_captions(strategy: str, rows: list[_Row], captioner: Captioner | None,
                    perturber: Perturber | None) -> list[tuple[str, str]]:
    """(caption_0, caption_1) of each row by `strategy` (see the module docstring)."""
    if strategy == "captioning":
        said = captioner([im for r in rows for im in r.images], [r.prompt for r in rows for _ in (0, 1)])  # type: ignore[misc]
        return [(said[2 * i], said[2 * i + 1]) for i in range(len(rows))]
    if strategy == "perturbation":
        decided = [r for r in rows if r.winner is not None]
        changed = dict(zip((r.index for r in decided), perturber([r.prompt for r in decided], [r.index for r in decided])))  # type: ignore[misc]
        out = []
        for r in rows:
            pair = [r.prompt, r.prompt]
            if r.winner is not None:
                pair[1 - r.winner] = changed[r.index]
            out.append((pair[0], pair[1]))
        return out
    # hybrid: the winner captioned, the loser its caption perturbed; ties: both images captioned
    wanted = [(r, k) for r in rows for k in ((r.winner,) if r.winner is not None else (0, 1))]
    said = captioner([r.images[k] for r, k in wanted], [r.prompt for r, _ in wanted])  # type: ignore[misc]
    captions: dict[tuple[int, int], str] = {(r.index, k): s for (r, k), s in zip(wanted, said)}
    decided = [r for r in rows if r.winner is not None]
    changed = dict(zip((r.index for r in decided),
                       perturber([captions[(r.index, r.winner)] for r in decided], [r.index for r in decided])))  # type: ignore[misc]
    out = []
    for r in rows:
        if r.winner is None:
            out.append((captions[(r.index, 0)], captions[(r.index, 1)]))
        else:
            pair = ["", ""]
            pair[r.winner], pair[1 - r.winner] = captions[(r.index, r.winner)], changed[r.index]
            out.append((pair[0], pair[1]))
    return out


def _captioned(job: CaptionJob, rows: list[_Row], captioner, perturber) -> tuple[dict[int, tuple[str, str]], list[dict]]:
    """Captions of the rows by index, and the rows that failed (a whole batch is retried row by row to find them)."""
    errors: list[dict] = []
    try:
        results = dict(zip((r.index for r in rows), second_captions(job.strategy, rows, captioner, perturber)))
    except Exception:  # noqa: BLE001 (any model error: find the row that causes it)
        results = {}
        for r in rows:
            try:
                results[r.index] = second_captions(job.strategy, [r], captioner, perturber)[0]
            except Exception as error:  # noqa: BLE001
                errors.append({"row": r.index, "error": f"{type(error).__name__}: {error}"})
    for index, pair in list(results.items()):
        if not all(c.strip() for c in pair):
            errors.append({"row": index, "error": f"an empty caption was generated {pair!r}"})
            del results[index]
    return results, errors


def caption_dataset(job: CaptionJob, processes: Processes | None = None) -> CaptionResult | None:
    """Write the second captions of every row of `job.source` not yet in a shard, then the dataset card; on several
    `processes` this process captions its share of the shards, and only the main process merges them, writes the
    card and returns the result (the others return None)."""
    processes = processes or current_processes()
    job.check()
    out = Path(job.out)
    with quiet_unless_main(processes):
        table = load_pair_table(job.source)
    settings = job.settings(len(table))
    records = shard_records(out, settings, len(table), job.shard_size)
    state, done = sharded_job_state(processes, out, settings, job.overwrite, records)
    todo = [shard for shard in processes.share(records.chunks) if shard not in done]
    start_time = time.time()
    captioner = perturber = None
    if todo:
        options = {"device": processes.device(job.device), "dtype": job.dtype, "batch_size": job.batch_size}
        if job.strategy != "perturbation":
            captioner = build_captioner(job.captioner, **({} if job.captioner == "shapes" else
                                                           {**options, "instruction": job.instruction}))  # type: ignore[arg-type]
        if job.strategy != "captioning":
            extra = {} if job.perturber == "shapes" else {**options, **({"template": job.template} if job.template else {})}
            perturber = build_perturber(job.perturber, job.diversity, job.seed, **extra)  # type: ignore[arg-type]
    rows_done = sum(len(range(s * job.shard_size, min((s + 1) * job.shard_size, len(table)))) for s in done)
    with job_progress(processes, out, "captions", len(table), rows_done, f"captions ({job.strategy})", "pair",
                      job.progress and rows_done < len(table)) as progress:
        for shard in todo:
            start, stop = shard * job.shard_size, min((shard + 1) * job.shard_size, len(table))
            records.write(shard, _caption_shard(job, out, shard, table, captioner, perturber, start, stop, progress))
    if not processes.is_main:
        return None
    merge_recorded_shards(out, state, recorded_shards(out, state, records, processes), records)
    errors = [e for s in state["shards"] for e in s["errors"]]
    rows = sum(s["rows"] for s in state["shards"])
    _write_card(job, out, state, rows, errors, time.time() - start_time)
    return CaptionResult(out, rows, errors, state["shards"])


def _caption_shard(job: CaptionJob, out: Path, shard: int, table, captioner, perturber, start: int, stop: int,
                   progress: JobProgress) -> dict:
    """Caption source rows [start, stop), write them as shard `shard`; what the progress file keeps of it."""
    errors: list[dict] = []
    captions: dict[int, tuple[str, str]] = {}
    for chunk in range(start, stop, job.batch_size):
        rows = []
        for index in range(chunk, min(chunk + job.batch_size, stop)):
            row = table[index]
            try:
                images = [decode_image(row[f"jpg_{k}"], f"{job.source} row {index} jpg_{k}") for k in (0, 1)]
            except ValueError as error:
                errors.append({"row": index, "error": str(error)})
                continue
            label = row.get("label_0")
            winner = 0 if label == 1 else 1 if label == 0 else None
            rows.append(_Row(index, row["caption"] or "", images, winner))
        if rows:
            done, failed = _captioned(job, rows, captioner, perturber)
            captions.update(done)
            errors.extend(failed)
        progress.update(min(chunk + job.batch_size, stop) - chunk)
    keep = sorted(captions)
    rows_out = table.select(keep)
    rows_out = rows_out.remove_columns([c for c in ("caption_0", "caption_1") if c in rows_out.column_names])
    rows_out = rows_out.add_column("caption_0", [captions[i][0] for i in keep])
    rows_out = rows_out.add_column("caption_1", [captions[i][1] for i in keep])
    errors.sort(key=lambda e: e["row"])
    return {"file": write_shard_file(out, shard, rows_out), "rows": len(keep), "source_rows": [start, stop], "errors": errors}


def _write_card(job: CaptionJob, out: Path, state: dict, rows: int, errors: list[dict], seconds: float) -> None:
    settings = state["settings"]
    details = {
        **{k: settings[k] for k in ("source", "strategy", "captioner", "perturber", "diversity", "seed")},
        "rows": rows,
        "complete": sum(s["source_rows"][1] - s["source_rows"][0] for s in state["shards"]) == settings["source_rows"],
        "rows_left_out": len(errors),
        "rows_left_out_list": errors[:100],
        "shards": [{k: s[k] for k in ("file", "rows", "source_rows")} for s in state["shards"]],
        "seconds_this_run": round(seconds, 1),
    }
    how = {
        "captioning": f"`caption_0`/`caption_1` say what each image shows (captioner `{job.captioner}`)",
        "perturbation": f"the winner keeps the prompt; the loser's caption perturbs it (`{job.perturber}`, "
                        f"diversity {settings['diversity']})",
        "hybrid": f"the winner's caption says what it shows (`{job.captioner}`); the loser's perturbs that "
                  f"(`{job.perturber}`, diversity {settings['diversity']})",
    }[job.strategy]
    description = (
        f"`{job.source}` with a caption per image, written by `diffalign captions` for DCPO ({job.strategy}): "
        f"{how}. `caption_k` describes `jpg_k`. Rows whose images could not be decoded or captioned are left "
        "out and listed below."
    )
    write_dataset_card(out, "Preference pairs with a caption per image", description, details, job.command,
                       tags=("dcpo", "dual-captions"))

"""AI-feedback preference pairs: K samples per prompt, scored, the best against the worst (or every clear pair).

For prompt i of a list, a text-to-image model draws K images, image j from the noise of seed
`image_seed(seed, i, j)`; one or several registered scorers score them against the prompt, and pairs
are built from the combined score (`choose_pairs`). The pairs are written in the Pick-a-Pic v2
schema (`caption`, `jpg_0`, `jpg_1` PNG bytes, `label_0`, `label_1`), the winner on a side drawn
from (seed, i, pair), with every scorer's score per image (`score_<scorer>_0/1`), the combined score
(`score_0/1`, see `feedback.combine`), `pref_prob_0` = P(image 0 preferred), the Bradley-Terry
preference probability of the combined score, `seed_0/1` and `model_0/1`.

The images of a generation batch are scored in memory by `rewards.batch.score_in_batches`; an image
no scorer could score takes no part in a pair, and a scorer that fails on every image of the first
batch stops the run.

Resumable per prompt: each prompt's pairs are saved as a pending part as soon as they exist and
gathered into shards (`feedback.pending_parts`). A rerun with the same settings skips every prompt
already done; a rerun with other settings is refused, naming what changed.

On several processes (`accelerate launch --num_processes N -m diffalign.cli.main pairs ...`, see
`diffalign.processes`): the prompts are drawn `batch_size // k` at a time, and chunk c is the c-th such
group of prompt indices (fixed by the prompt list and the batch size, never by N); process r draws chunks
r, r + N, ... of the prompts not done yet, writing their parts and a chunk record each. Only the main
process gathers parts into shards, in prompt order and never past a prompt not drawn yet, so the shards,
`progress.json` and the card are those one process writes. Seeds are per (prompt, image) and the winners'
sides per (prompt, pair), so nothing depends on which process drew a prompt.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..data.cards import write_dataset_card
from ..data.order import derive_seed
from ..data.resume import PROGRESS_FILE, SHARD_GLOB, from_ranges, open_progress, read_progress, save_progress, to_ranges
from ..evaluation.prompts import load_prompts
from ..evaluation.scoring import build_scorers
from ..processes import ChunkRecords, Processes, current_processes, fingerprint, job_progress, prepare_status
from ..rewards.batch import score_in_batches
from ..synthetic.domain import split_specs
from .combine import COMBINED_SCORE_NOTE, SCORE_COLUMNS_DOC, combine_scores, preference_of_first, record_scorers
from .pairs_job import DEMO_GROUPS, STRATEGIES, PairsJob  # noqa: F401 (PairsJob: the job this module runs)
from .pending_parts import PENDING_DIR, flush_parts, pending_prompts, write_part

RECORDS_DIR = "chunks"
_IMAGE_KEY, _SIDE_KEY = 0, 1


def demo_captions(groups: int = DEMO_GROUPS, seed: int = 0) -> list[str]:
    """The demo's training captions: every training caption of the shapes world in a shuffled order,
    reshuffled and repeated until there are `groups` (held-out captions never appear)."""
    rng = random.Random(seed)
    order = [s.caption for s in split_specs()[0]]
    captions: list[str] = []
    while len(captions) < groups:
        rng.shuffle(order)
        captions += order[: groups - len(captions)]
    return captions


def prompt_list(prompts: str, seed: int = 0) -> tuple[list[str], str]:
    """The prompts `--prompts` names, and how the dataset card names them: `demo` (the demo's training
    captions, shuffled by `seed`) or a prompt file."""
    if prompts == "demo":
        return demo_captions(DEMO_GROUPS, seed), f"demo ({DEMO_GROUPS} shapes-world training captions)"
    return load_prompts(prompts), prompts


def image_seed(seed: int, prompt_index: int, image_index: int) -> int:
    """The seed of image `image_index` of prompt `prompt_index`: a function of (seed, prompt, image) only."""
    return derive_seed(seed, _IMAGE_KEY, prompt_index, image_index)


def winner_first(seed: int, prompt_index: int, pair_index: int) -> bool:
    """Whether pair `pair_index` of prompt `prompt_index` puts its winner in `jpg_0` (a fair coin from the seed)."""
    return derive_seed(seed, _SIDE_KEY, prompt_index, pair_index) % 2 == 0


def choose_pairs(combined: np.ndarray, strategy: str = "best-worst", min_margin: float = 0.0) -> list[tuple[int, int]]:
    """(winner, loser) image indices among one prompt's images, from their combined scores.

    `best-worst`: the best and the worst image, one pair per prompt. `margin`: every pair of images,
    best-scored pairs' order kept stable (by winner, then loser index). Either way a pair needs a
    margin of at least `min_margin` and above 0 (equal scores make no winner); images without a
    finite score take no part.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if min_margin < 0:
        raise ValueError(f"min margin must be >= 0, got {min_margin}")
    scores = np.asarray(combined, dtype=np.float64)
    valid = [i for i in range(len(scores)) if np.isfinite(scores[i])]
    if len(valid) < 2:
        return []

    def clear(w: int, l_: int) -> bool:
        margin = scores[w] - scores[l_]
        return margin > 0 and margin >= min_margin

    if strategy == "best-worst":
        best = max(valid, key=lambda i: scores[i])
        worst = min(valid, key=lambda i: scores[i])
        return [(best, worst)] if clear(best, worst) else []
    pairs = []
    for a_pos, a in enumerate(valid):
        for b in valid[a_pos + 1 :]:
            w, l_ = (a, b) if scores[a] >= scores[b] else (b, a)
            if clear(w, l_):
                pairs.append((w, l_))
    return pairs


def group_rows(
    caption: str,
    images: Sequence[object],
    scores: dict[str, np.ndarray],
    combined: np.ndarray,
    logit_scale: float,
    seeds: Sequence[int],
    model: str,
    pairs: Sequence[tuple[int, int]],
    sides: Sequence[bool],
) -> dict[str, list]:
    """The Pick-a-Pic-schema rows of one prompt's pairs; `sides[p]` puts pair p's winner in `jpg_0`."""
    keys = ["caption", "jpg_0", "jpg_1", "label_0", "label_1"]
    keys += [f"score_{name}_{k}" for name in scores for k in (0, 1)]
    keys += ["score_0", "score_1", "pref_prob_0", "seed_0", "seed_1", "model_0", "model_1"]
    rows: dict[str, list] = {key: [] for key in keys}
    for (winner, loser), first in zip(pairs, sides):
        order = (winner, loser) if first else (loser, winner)
        rows["caption"].append(caption)
        rows["label_0"].append(1.0 if first else 0.0)
        rows["label_1"].append(0.0 if first else 1.0)
        for k, i in enumerate(order):
            rows[f"jpg_{k}"].append(images[i])
            for name, values in scores.items():
                rows[f"score_{name}_{k}"].append(float(values[i]))
            rows[f"score_{k}"].append(float(combined[i]))
            rows[f"seed_{k}"].append(int(seeds[i]))
            rows[f"model_{k}"].append(model)
        rows["pref_prob_0"].append(float(preference_of_first(combined[order[0]], combined[order[1]], logit_scale)))
    return rows


def model_label(model: str, loras: Sequence[tuple[str, float]] = ()) -> str:
    """How `model_0/1` name the generator: a local folder's name or the hub id, plus its LoRAs."""
    local = Path(model).expanduser()
    name = local.name if local.exists() else model
    return "+".join([name, *(f"{Path(p).name}@{s:g}" for p, s in loras)])


def load_generator(job: PairsJob):
    """The job's pipeline with its LoRA adapters (diffusers' `load_lora_weights`) at their scales."""
    from ..sampling.generate import load_pipeline

    return load_pipeline(job.model, device=job.device, dtype=job.dtype, loras=job.loras)


@dataclass
class PairsResult:
    """What `build_pairs` did: the output folder, the prompts done in this run and the totals so far."""

    out: Path
    prompts_done_now: int
    totals: dict
    shards: list[dict]
    complete: bool


def build_pairs(job: PairsJob, processes: Processes | None = None) -> PairsResult | None:
    """Generate, score and pair the images of every prompt not done yet (up to `max_prompts`), write
    shards and the dataset card; see the module docstring for the layout, the resumption rules and the
    split over `processes` (default: this launch's). The main process returns the result, the others None."""
    job.check()
    processes = processes or current_processes()
    job = replace(job, device=processes.device(job.device))
    out = Path(job.out)
    settings = job.settings()
    target = min(len(job.prompts), job.max_prompts or len(job.prompts))
    per_call = max(1, job.batch_size // job.k)
    records = _chunk_records(out, settings, target, per_call)
    if processes.is_main:  # what it finds before the others start: they add parts of this run's chunks
        state = _open(job, out, settings, target, records)
        done = from_ranges(state.get("done", [])) | pending_prompts(out)
    prepare_status(processes, out)
    if not processes.is_main:
        pending = pending_prompts(out)  # before the progress file: a prompt leaves the parts once it names it
        state = read_progress(out)
        done = from_ranges(state.get("done", [])) | pending
    chunks = [[i for i in range(c * per_call, min((c + 1) * per_call, target)) if i not in done]
              for c in range(records.chunks)]
    todo = sum(len(prompts) for prompts in chunks)
    mine = [c for c in processes.share(records.chunks) if chunks[c]]

    start = time.time()
    with job_progress(processes, out, "pairs", todo, desc=f"pairs ({', '.join(job.scorers)})", unit="prompt",
                      enabled=job.progress) as progress:
        if mine or (todo and processes.is_main):  # the main process notes the scorers in the progress file
            scorers = build_scorers(job.scorers, job.scorer_options, job.device, job.scorer_dtype, job.batch_size)
            weights, logit_scale = record_scorers(state, scorers, job.weights)
        if mine:
            pipe = load_generator(job)
        for n, chunk in enumerate(mine):
            _draw(job, out, settings, chunks[chunk], pipe, scorers, weights, logit_scale, first=n == 0)
            records.write(chunk, {"prompts": to_ranges(chunks[chunk])})
            if processes.is_main:
                flush_parts(out, state, job.shard_size, final=False, limit=target, settings=settings)
            progress.update(len(chunks[chunk]))
    if not processes.is_main:
        return None
    _finish(job, out, state, target, per_call, processes)
    records.clear()
    complete = target == len(job.prompts)
    _write_card(job, out, state, complete, time.time() - start)
    return PairsResult(out, todo, state.get("totals", {}), state["shards"], complete)


def _chunk_records(out: Path, settings: dict, target: int, per_call: int) -> ChunkRecords:
    """This run's chunks: chunk c is the prompts [c x per_call, (c+1) x per_call) below `target`, drawn in one
    call; its record lists those it drew (the parts are what a rerun resumes from)."""

    def describe(chunk: int) -> str:
        return f"prompts {chunk * per_call}-{min((chunk + 1) * per_call, target) - 1}"

    job = fingerprint({**settings, "target": target, "per_call": per_call})
    return ChunkRecords(out / PENDING_DIR / RECORDS_DIR, job, math.ceil(target / per_call), describe)


def _open(job: PairsJob, out: Path, settings: dict, target: int, records: ChunkRecords) -> dict:
    """The main process's start: check the settings against the progress file (refusing a change, naming it),
    refuse pending parts drawn with other settings, gather the parts a stopped run left and write the progress
    file the other processes read."""
    if job.overwrite:
        shutil.rmtree(out / PENDING_DIR, ignore_errors=True)
    state = open_progress(out, settings, job.overwrite or not _holds_work(out))
    pending_prompts(out, settings)
    records.clear()  # an earlier run's log (its batch size or --max-prompts may differ); the parts are the work
    flush_parts(out, state, job.shard_size, final=False, limit=target, settings=settings)
    save_progress(out, state)
    return state


def _holds_work(out: Path) -> bool:
    """Whether `out` holds work that other settings would lose: shards, prompts recorded done, pending parts (a
    progress file without any, as a run that failed while loading its models leaves, is no reason to refuse)."""
    if any(out.glob(SHARD_GLOB)) or pending_prompts(out):
        return True
    try:
        state = json.loads((out / PROGRESS_FILE).read_text())
    except FileNotFoundError:
        return False
    except ValueError:
        return True  # open_progress names the broken file
    return bool(state.get("done") or state.get("shards"))


def _draw(job: PairsJob, out: Path, settings: dict, prompts: list[int], pipe, scorers, weights: dict,
          logit_scale: float, first: bool) -> None:
    """Draw, score and pair the images of `prompts` in one call and write each prompt's pending part."""
    from ..sampling.generate import generate

    label = model_label(job.model, job.loras)
    texts = [job.prompts[i] for i in prompts for _ in range(job.k)]
    seeds = [image_seed(job.seed, i, j) for i in prompts for j in range(job.k)]
    arrays = generate(pipe, texts, seeds, job.steps, job.guidance, job.size, batch_size=job.batch_size)
    result = score_in_batches(scorers, arrays, texts, batch_size=job.batch_size, stop_if_first_batch_fails=first)
    scores = {name: values.numpy() for name, values in result.scores.items()}
    combined = combine_scores(scores, weights)
    for c, i in enumerate(prompts):
        group = slice(c * job.k, (c + 1) * job.k)
        pairs = choose_pairs(combined[group], job.strategy, job.min_margin)
        sides = [winner_first(job.seed, i, p) for p in range(len(pairs))]
        rows = group_rows(
            job.prompts[i], arrays[group], {n: v[group] for n, v in scores.items()}, combined[group],
            logit_scale, seeds[group], label, pairs, sides,
        )
        finite = combined[group][np.isfinite(combined[group])]
        margins = [combined[group][w] - combined[group][l_] for w, l_ in pairs]
        stats = {
            "prompts": 1, "pairs": len(pairs), "prompts_without_pairs": int(not pairs), "images": job.k,
            "images_failed": int(job.k - len(finite)), "score_sum": float(finite.sum()),
            "margin_sum": float(np.sum(margins)),
        }
        write_part(out, i, rows, stats, settings)


def _finish(job: PairsJob, out: Path, state: dict, target: int, per_call: int, processes: Processes) -> None:
    """Gather the last parts into a final shard once every prompt up to `target` has its part; a missing one
    (not drawn, or written where this process cannot see it) raises a ValueError naming it."""
    done = from_ranges(state.get("done", [])) | pending_prompts(out)
    missing = next((i for i in range(target) if i not in done), None)
    if missing is not None:
        chunk = missing // per_call
        owner = f", the share of process {processes.owner(chunk)} of {processes.count}" if processes.many else ""
        raise ValueError(
            f"{out / PENDING_DIR}: no part of prompt {missing} (drawn with prompts {chunk * per_call}-"
            f"{min((chunk + 1) * per_call, target) - 1}{owner}): it was not drawn (rerun the same command to draw "
            "it), or was written where this process cannot see it (on several nodes --out must be on a filesystem "
            "every node shares)"
        )
    flush_parts(out, state, job.shard_size, final=True, limit=target, settings=job.settings())
    if not pending_prompts(out):
        shutil.rmtree(out / PENDING_DIR, ignore_errors=True)


def _write_card(job: PairsJob, out: Path, state: dict, complete: bool, seconds: float) -> None:
    totals = state.get("totals", {})
    pairs, images = totals.get("pairs", 0), totals.get("images", 0)
    scored = images - totals.get("images_failed", 0)
    details = {
        "model": job.model,
        "loras": [{"path": p, "scale": s} for p, s in job.loras],
        "prompts": job.prompts_source,
        "prompts_total": len(job.prompts),
        "prompts_done": totals.get("prompts", 0),
        "complete": complete,
        "k": job.k, "steps": job.steps, "guidance": job.guidance, "size": job.size, "seed": job.seed,
        "seeds": "image j of prompt i starts from the noise of derive_seed(seed, 0, i, j) "
                 "(diffalign.feedback.build_pairs.image_seed), recorded in seed_0/seed_1",
        "scorers": state.get("scorers", {}),
        "combined_score": COMBINED_SCORE_NOTE,
        "combined_logit_scale": state.get("combined_logit_scale"),
        "strategy": job.strategy, "min_margin": job.min_margin,
        "pairs": pairs,
        "prompts_without_pairs": totals.get("prompts_without_pairs", 0),
        "images": images, "images_failed": totals.get("images_failed", 0),
        "mean_score_of_samples": totals.get("score_sum", 0.0) / scored if scored else None,
        "mean_margin": totals.get("margin_sum", 0.0) / pairs if pairs else None,
        "shards": state["shards"],
        "seconds_this_run": round(seconds, 1),
    }
    scorer_list = ", ".join(f"`{name}` ({info['scale']})" for name, info in details["scorers"].items()) or job.scorers
    description = (
        f"Preference pairs from AI feedback, made by `diffalign pairs`: for each prompt, `{model_label(job.model, job.loras)}` "
        f"drew {job.k} images ({job.steps} steps, CFG {job.guidance}, recorded seeds), scored by {scorer_list}; "
        f"pairs by the `{job.strategy}` strategy (combined-score margin at least {job.min_margin}), the winner on a "
        "random side.\n\n"
        f"Columns: Pick-a-Pic v2 schema (`caption`, `jpg_0`, `jpg_1` PNG bytes, `label_0`, `label_1`) plus "
        f"{SCORE_COLUMNS_DOC}, `seed_0/1`, `model_0/1`.\n\n"
        "Train on it with `diffalign train data.path=<this folder>`."
    )
    write_dataset_card(out, "AI-feedback preference pairs", description, details, job.command, tags=("ai-feedback",))

"""`diffalign eval`: base and tuned models on one prompt set with identical seeds, scored, compared, reported.

The steps, each reusing what a stopped run already wrote:
1. generate every (prompt, seed) with every model into `OUT/images/<model>/` (resumable folders);
2. score every image with every scorer, in chunks of `batch_size` images whose scores are recorded in
   `OUT/.scores/` until `results.json` is written (`scores.csv`: one row per prompt and seed);
3. per scorer: each model's mean and median with a bootstrap CI over prompts; each tuned model's
   win/tie/loss against the base with bootstrap CIs; the same per category when the set has them;
4. grids of the first prompts (`grids/`, the first `grid_seeds` seeds), plots, `summary.md`, `report.html` (the
   same prompts for every seed, each image with its score and each base/tuned pair's winner) and `results.json`.

Under a distributed launcher steps 1 and 2 are shared: process r of N draws generation batches r, r + N, ...
of each model and scores scoring chunks r, r + N, ...; the main process merges them in order and alone does
steps 3 and 4, so the outputs are those of one process.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .. import __version__
from ..files import atomic_write_text
from ..models.lora_files import check_lora_fits
from ..models.model_card import update_run_cards
from ..processes import ChunkRecords, Processes, current_processes, fingerprint, job_progress, prepare_status
from ..rewards.base import Scorer
from ..rewards.batch import score_in_batches
from .generated import read_generated
from ..config.options import MISSING, option, out_option, scorer_options_option, scorers_option, seeds_option
from .generation import SamplingOptions, SamplingSettings, generate_folder, image_name
from .grid import grids_from_folders, save_png
from ..data.image_inputs import open_image
from .model_specs import ModelSpec
from .prompt_sets import PromptSet
from .report import write_report
from .stats import bootstrap_mean, compare_paired

SCORE_CHUNK = 256  # images held in memory per scorer call
SCORES = ".scores"  # under OUT: the records of scored chunks, until results.json is written
SCORE_SETTINGS = "settings.json"  # beside them: the settings they were scored with


@dataclass(kw_only=True)
class EvalOptions(SamplingOptions):
    """The options of `diffalign eval` (and of the Python API's `evaluate`): the models, the scorers, the
    statistics, the report and where it goes, and the sampling options."""

    tuned: str | Path | list[str] | dict[str, str] = option(
        MISSING, "tuned model(s) to compare with the base", positional=True, nargs="+", metavar="[NAME=]TUNED[@SCALE]")
    base: str | Path | None = option(None, "base model (default: model.pretrained of the first run's config.yaml)")
    seeds: str | int | list[int] = seeds_option("3", "seeds per prompt: a count N (0..N-1), a range A-B or a list "
                                                "a,b,c; the same (prompt, seed) starts every model from the same noise")
    scorers: str | list[str] = scorers_option(["shapes"], "scorer(s) by name (repeat, or separate with commas; shapes "
                                              "is the demo's reward); `diffalign score --help` lists them")
    scorer_options: list[str] | dict[str, dict] = scorer_options_option()
    tie_tolerance: float = option(0.0, "score differences up to this count as ties (default: exact equality)",
                                  show_default=False)
    resamples: int = option(2000, "bootstrap resamples", min=1)
    grid_prompts: int = option(8, "prompts shown in the report's grids")
    grid_seeds: int = option(2, "seeds per prompt shown in the grids")
    out: str | Path | None = out_option("output folder (default: TUNED/eval for a run, else ./eval)", default=None)


@dataclass(kw_only=True)
class EvalCommandOptions(EvalOptions):
    """The options of the `diffalign eval` command: those of `EvalOptions` and how it prints."""

    json: bool = option(False, "also print results.json")


@dataclass
class EvalJob:
    """What `diffalign eval` compares and how (the models, prompts and settings its options name, resolved)."""

    base: ModelSpec
    tuned: list[ModelSpec]
    prompts: PromptSet
    seeds: Sequence[int] = (0, 1, 2)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    scorers: Sequence[str] = ("shapes",)
    scorer_options: dict[str, dict] = field(default_factory=dict)
    tie_tolerance: float = EvalOptions.tie_tolerance
    resamples: int = EvalOptions.resamples
    bootstrap_seed: int = 0
    batch_size: int = EvalOptions.batch_size
    device: str | None = None
    grid_prompts: int = EvalOptions.grid_prompts  # prompt rows in the report's grids (first prompts of each category)
    grid_seeds: int = EvalOptions.grid_seeds  # seeds in the grid PNGs (report.html offers every seed)
    out: Path = Path("eval")
    progress: bool = True


def folder_name(name: str) -> str:
    """A model name made safe as a folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def check_models(job: EvalJob) -> list[ModelSpec]:
    """Base first, then the tuned models; names must be unique as folder names."""
    models = [job.base, *job.tuned]
    names = [folder_name(m.name) for m in models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"model names must differ: {', '.join(duplicates)} is used twice (name them NAME=PATH)")
    if not job.tuned:
        raise ValueError("nothing to compare: give at least one tuned model")
    return models


def _read_image(path: Path) -> Image.Image:
    try:
        return open_image(path)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def score_folder(scorer: Scorer, folder: Path, keys: Sequence[tuple[int, int]], prompts: Sequence[str]
                 ) -> tuple[np.ndarray, list[dict[str, float]] | None]:
    """Scores of the images `image_name(prompt_index, seed)` of `folder`, in the order of `keys`, and, for a
    scorer made of several criteria (one with `details`), each image's criteria from the same decoded images.

    Every image must be scored (the comparisons are paired): an image that cannot be read or scored
    raises a ValueError naming its file, after the rest of its chunk was tried.
    """
    scores, details = [], [] if hasattr(scorer, "details") else None
    for start in range(0, len(keys), SCORE_CHUNK):
        chunk = keys[start : start + SCORE_CHUNK]
        paths = [folder / image_name(index, seed) for index, seed in chunk]
        images = [_read_image(path) for path in paths]
        texts = [prompts[i] for i, _ in chunk]
        result = score_in_batches(scorer, images, texts, batch_size=SCORE_CHUNK)
        if result.failures:
            first = result.failures[0]
            more = f" (and {len(result.failed) - 1} more image(s))" if len(result.failed) > 1 else ""
            raise ValueError(f"{paths[first.index]}: {first.reason}{more}")
        scores.append(result.values().numpy())
        if details is not None:
            details += scorer.details(np.stack([np.asarray(im) for im in images]), texts)
    return (np.concatenate(scores) if scores else np.zeros(0)), details


def criterion_means(per_image: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each criterion over the images whose prompt names it (prompts name different criteria:
    only some captions give a size), in order of first appearance."""
    keys = list(dict.fromkeys(key for d in per_image for key in d))
    return {key: float(np.mean([d[key] for d in per_image if key in d])) for key in keys}


def _grid_prompts(prompts: PromptSet, count: int) -> list[int]:
    """`count` prompt indices spread over the categories (round robin), in set order without categories."""
    if not prompts.has_categories:
        return list(range(min(count, len(prompts.prompts))))
    by_category: dict[str, list[int]] = {}
    for i, p in enumerate(prompts.prompts):
        by_category.setdefault(str(p.category), []).append(i)
    picked: list[int] = []
    queues = list(by_category.values())
    while len(picked) < count and any(queues):
        for queue in queues:
            if queue and len(picked) < count:
                picked.append(queue.pop(0))
    return sorted(picked)


def _write_scores_csv(path: Path, keys, prompts: PromptSet, columns: dict[str, np.ndarray]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["index", "prompt_index", "prompt", "category", "seed", *columns])
    for row, (index, seed) in enumerate(keys):
        p = prompts.prompts[index]
        writer.writerow([row, index, p.text, p.category or "", seed, *(repr(float(v[row])) for v in columns.values())])
    atomic_write_text(path, buffer.getvalue())


def _statistics(job: EvalJob, models, scores, groups, categories) -> tuple[dict, dict, dict]:
    base = models[0].name
    boot = {"resamples": job.resamples, "seed": job.bootstrap_seed}
    summary: dict = {}
    comparisons: dict = {}
    per_category: dict = {}
    for scorer, by_model in scores.items():
        summary[scorer] = {m: bootstrap_mean(s, groups, **boot) for m, s in by_model.items()}
        comparisons[scorer] = {
            m.name: compare_paired(by_model[m.name], by_model[base], groups, job.tie_tolerance, **boot).as_dict()
            for m in models[1:]
        }
        if categories is None:
            continue
        per_category[scorer] = {}
        for category in dict.fromkeys(categories):
            mask = categories == category
            per_category[scorer][category] = {
                "n": int(mask.sum()),
                "prompts": int(len(np.unique(groups[mask]))),
                "scores": {m: {"mean": float(s[mask].mean()), "median": float(np.median(s[mask]))}
                           for m, s in by_model.items()},
                "comparisons": {
                    m.name: compare_paired(by_model[m.name][mask], by_model[base][mask], groups[mask],
                                           job.tie_tolerance, **boot).as_dict()
                    for m in models[1:]
                },
            }
    return summary, comparisons, per_category


def _score_settings(job: EvalJob, models: Sequence[ModelSpec]) -> dict:
    """What the scores of an eval depend on besides the images' own settings (which their folders check):
    stamped on its scoring records, compared with an unfinished eval's to refuse mixing two."""
    return json.loads(json.dumps({
        "scorers": list(job.scorers),
        "scorer_options": {name: job.scorer_options.get(name, {}) for name in job.scorers},
        "models": {m.name: {k: v for k, v in m.as_dict().items() if k != "name"} for m in models},
        "prompt_set": job.prompts.name,
        "prompts_sha256": hashlib.sha256(json.dumps(job.prompts.texts).encode()).hexdigest(),
        "seeds": [int(s) for s in job.seeds],
        "batch_size": job.batch_size,
    }, default=str))


def check_unfinished_scores(folder: Path, settings: dict) -> None:
    """Refuse to go on with the scoring records in `folder` (an eval stopped while scoring) when they were
    written with other settings, naming the first that changed; then record `settings` there."""
    path = folder / SCORE_SETTINGS
    if any(folder.glob("chunk-*.json")) and path.is_file():
        try:
            earlier = json.loads(path.read_text())
        except ValueError:
            earlier = {}  # the records' fingerprints tell
        for key, value in settings.items():
            if key in earlier and earlier[key] != value:
                raise ValueError(
                    f"{folder} holds the scores of an unfinished eval with {key}={earlier[key]!r}, not {value!r}: "
                    f"rerun that eval to finish it, or delete {folder} to score afresh"
                )
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(settings, indent=2))


def _score_chunks(job: EvalJob, keys: Sequence[tuple[int, int]]) -> list[tuple[str, range]]:
    """The scoring chunks: per scorer, the keys in runs of `batch_size` (the images of a generation batch)."""
    spans = [range(start, min(start + job.batch_size, len(keys))) for start in range(0, len(keys), job.batch_size)]
    return [(name, span) for name in job.scorers for span in spans]


def score_all(job: EvalJob, models: Sequence[ModelSpec], folders: dict[str, Path], keys: Sequence[tuple[int, int]],
              device: str, processes: Processes) -> tuple[dict, dict, dict] | None:
    """Score every image of every model with every scorer, each process its share of the chunks (a chunk's
    scores go to a record in OUT/.scores, so a stopped eval rescores only the chunks without one). On the main
    process: (scores[scorer][model] in key order, criteria[scorer][model] means, scorer info); None elsewhere."""
    from ..rewards import build_scorer

    folder = Path(job.out) / SCORES
    prepare_status(processes, Path(job.out))  # the main process checked the records' settings before generating
    chunks = _score_chunks(job, keys)

    def describe(chunk: int) -> str:
        name, span = chunks[chunk]
        return f"the {name} scores of images {span.start}-{span.stop - 1}"

    records = ChunkRecords(folder, fingerprint(_score_settings(job, models)), len(chunks), describe)
    done = records.done()
    total = len(models) * len(job.scorers) * len(keys)
    initial = len(models) * sum(len(chunks[chunk][1]) for chunk in done)
    texts = job.prompts.texts
    with job_progress(processes, Path(job.out), "score", total, initial, desc="score", unit="img",
                      enabled=job.progress) as bar:
        scorer: Scorer | None = None
        scorer_name = None
        for chunk in processes.share(len(chunks)):
            if chunk in done:
                continue
            name, span = chunks[chunk]
            if name != scorer_name:
                scorer = None  # the previous scorer's memory is freed before the next one loads
                scorer, scorer_name = build_scorer(name, device=device, **job.scorer_options.get(name, {})), name
            record: dict = {"scale": getattr(scorer, "scale", None), "scores": {}, "details": {}}
            for m in models:
                values, details = score_folder(scorer, folders[m.name], keys[span.start : span.stop], texts)
                record["scores"][m.name] = values.tolist()
                if details is not None:
                    record["details"][m.name] = [{k: float(v) for k, v in d.items()} for d in details]
                bar.update(len(span))
            records.write(chunk, record)
        scorer = None
    if not processes.is_main:
        return None
    scores: dict[str, dict[str, list[float]]] = {name: {m.name: [] for m in models} for name in job.scorers}
    per_image: dict[str, dict[str, list[dict]]] = {}
    info: dict[str, dict] = {}
    for (name, _), record in zip(chunks, records.read_all(processes)):
        info.setdefault(name, {"scale": record["scale"], "options": job.scorer_options.get(name, {})})
        for m in models:
            scores[name][m.name] += record["scores"][m.name]
            if m.name in record["details"]:
                per_image.setdefault(name, {}).setdefault(m.name, []).extend(record["details"][m.name])
    arrays = {name: {m: np.asarray(values, dtype=np.float64) for m, values in by_model.items()}
              for name, by_model in scores.items()}
    criteria = {name: {m: criterion_means(d) for m, d in by_model.items()} for name, by_model in per_image.items()}
    return arrays, criteria, info


def run_eval(job: EvalJob, processes: Processes | None = None) -> dict | None:
    """Generate, score, compare and report (see the module docstring); returns the results dict on the main
    process and None on the others (each generates and scores its share; the main process reports)."""
    from ..sampling.generate import default_device, resolve_dtype

    processes = processes or current_processes()
    models = check_models(job)
    for model in models:  # a LoRA that does not fit fails now, not after the models before it are drawn
        if model.loras:
            check_lora_fits(model.pipeline, [path for path, _ in model.loras], model.unet)
    out = Path(job.out)
    device = job.device or default_device()  # recorded in results.json: the same on any number of processes
    own_device = processes.device(job.device) or device
    if processes.is_main:  # an unfinished eval of other settings is refused before any image is drawn
        check_unfinished_scores(out / SCORES, _score_settings(job, models))
    folders = {}
    for model in models:
        folder = out / "images" / folder_name(model.name)
        generate_folder(model, job.prompts, job.seeds, folder, job.sampling, job.batch_size, own_device,
                        job.progress, processes)
        folders[model.name] = folder

    keys = [(i, int(s)) for i in range(len(job.prompts.prompts)) for s in job.seeds]
    texts = job.prompts.texts
    groups = np.array([i for i, _ in keys])
    categories = np.array([str(job.prompts.prompts[i].category) for i, _ in keys]) if job.prompts.has_categories else None
    scored = score_all(job, models, folders, keys, own_device, processes)
    if scored is None:
        return None
    scores, criteria, scorer_info = scored

    columns = {f"{m}/{scorer}": s for scorer, by_model in scores.items() for m, s in by_model.items()}
    _write_scores_csv(out / "scores.csv", keys, job.prompts, columns)
    summary, comparisons, per_category = _statistics(job, models, scores, groups, categories)

    grids = []
    generated = {m.name: read_generated(folders[m.name]) for m in models}
    grid_seeds = [int(s) for s in job.seeds][: job.grid_seeds]
    pages = grids_from_folders(generated, _grid_prompts(job.prompts, job.grid_prompts), grid_seeds)
    for stale in (out / "grids").glob("grid-*.png"):  # pages of an earlier run with other settings
        stale.unlink()
    for n, (image, info) in enumerate(pages, 1):
        path = out / "grids" / f"grid-{n:02d}.png"
        save_png(image, path)
        grids.append({"file": path.relative_to(out).as_posix(), **info})

    size = job.sampling.size or Image.open(folders[models[0].name] / image_name(*keys[0])).size[0]
    results = {
        "diffalign_version": __version__,
        "settings": {
            "prompt_set": job.prompts.name, "prompt_source": job.prompts.source, "prompts": len(texts),
            "seeds": [int(s) for s in job.seeds], "sampler": job.sampling.sampler, "steps": job.sampling.steps,
            "guidance": job.sampling.guidance, "width": size, "height": size,
            "negative_prompt": job.sampling.negative_prompt, "tie_tolerance": job.tie_tolerance,
            "bootstrap": {"resamples": job.resamples, "seed": job.bootstrap_seed, "unit": "prompt"},
            "device": device, "dtype": resolve_dtype(job.sampling.dtype, device),
        },
        "models": [{**m.as_dict(), "role": "base" if i == 0 else "tuned",
                    "images": folders[m.name].relative_to(out).as_posix()} for i, m in enumerate(models)],
        "scorers": scorer_info,
        "pairs": len(keys),
        "scores": summary,
        "comparisons": comparisons,
        "categories": per_category,
        "criteria": criteria,
        "grids": grids,
        "plots": [],
        "files": {"scores": "scores.csv", "summary": "summary.md", "report": "report.html"},
    }
    write_report(results, out)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    shutil.rmtree(out / SCORES, ignore_errors=True)  # the scores are in scores.csv now
    update_run_cards(results, out)  # a tuned run folder's model card gains this evaluation
    return results

"""`diffalign generate`: images for a prompt set × seeds, written as a resumable, self-describing folder.

Each image is `p{prompt_index:05d}-s{seed}.png`, written atomically; a line in `metadata.jsonl`
(the Hugging Face imagefolder convention, so `diffalign score FOLDER` reads it) records its prompt,
seed and every setting. `generation.json` holds the settings that shape the images and the sha256 of
the local weights files. A rerun skips the images already written, so a stopped run continues where
it stopped; a rerun with other settings, or with weights changed at the same path (a run trained
further), is refused (naming the setting or file) instead of mixing two models in one folder.

The images, in prompt-then-seed order, make batches of `batch_size` (one pipeline call each). Under a
distributed launcher process r of N draws batches r, r + N, ... (`processes.py`); each drawn batch gets a
record in `.batches/` with its metadata lines, and the main process writes `metadata.jsonl` in image order
once every batch is drawn. A job stopped before that (killed, or a process failed) leaves its records: the
next run, on any number of processes, takes them in and draws only the batches without one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from ..config.options import (MISSING, batch_size_option, device_option, dtype_option, max_prompts_option, option,
                              out_option, progress_option, prompts_option, seeds_option)
from ..files import atomic_write, atomic_write_text, check_output_folder
from ..models.lora_files import lora_file
from ..paths import resolve_local
from ..processes import (ChunkRecords, Processes, current_processes, fingerprint, job_progress, prepare_status,
                         read_shared)
from ..sampling.generate import SAMPLERS
from .model_specs import ModelSpec
from .prompt_sets import PromptSet

METADATA = "metadata.jsonl"
SETTINGS = "generation.json"
WEIGHTS = "weights_sha256"  # the key of generation.json that records `weights_digests`
RECORDS = ".batches"  # the records of batches drawn but not yet in metadata.jsonl (a job under way or stopped)


PROMPT_SETS_HELP = (
    "a named set (parti, pickapic-test, pickapic-validation, hpdv2, demo: the embedded demo's held-out captions; "
    "NAME:CATEGORY keeps one category, e.g. hpdv2:anime) or a prompt file (.txt one per line, "
    ".csv/.tsv/.jsonl/.json/.parquet with a prompt column and optionally a category column)"
)


@dataclass(kw_only=True)
class SamplingOptions:
    """The options `diffalign generate` and `diffalign eval` share: which prompts and seeds, how the images are
    drawn, and where the models run."""

    prompts: str = prompts_option("demo", f"prompts: {PROMPT_SETS_HELP}")
    max_prompts: int | None = max_prompts_option("only the first N prompts of the set")
    seeds: str | int | list[int] = seeds_option("1", "seeds per prompt: a count N (0..N-1), a range A-B or a list "
                                                "a,b,c; the same (prompt, seed) starts every model from the same noise")
    sampler: str = option("ddim", f"scheduler: {', '.join(SAMPLERS)}")
    steps: int = option(20, "sampling steps")
    guidance: float = option(5.0, "classifier-free guidance scale")
    size: int | None = option(None, "image height and width (default: the model's native size)")
    negative_prompt: str = option("", "negative prompt for every image (default: none)")
    dtype: str = dtype_option("auto", "model")
    batch_size: int = batch_size_option(16, "images per pipeline call, and per scorer call in eval")
    device: str | None = device_option()
    progress: bool = progress_option()


@dataclass(kw_only=True)
class GenerateOptions(SamplingOptions):
    """The options of `diffalign generate`: the model, its LoRAs, the output folder and the sampling options."""

    model: str = option(MISSING, "hub id, pipeline folder, or a `diffalign train` run / LoRA folder (then on its "
                        "base)", positional=True)
    base: str | None = option(None, "base model of a LoRA folder without a run config")
    lora: list[str] = option([], "LoRA folder or run added at SCALE (default 1; repeatable)", repeat=True,
                             metavar="PATH[@SCALE]")
    out: Path = out_option("output folder (created; reused to resume)")


@dataclass
class SamplingSettings:
    """How images are drawn; every field shapes the pixels and is recorded with each image."""

    sampler: str = SamplingOptions.sampler
    steps: int = SamplingOptions.steps
    guidance: float = SamplingOptions.guidance
    size: int | None = SamplingOptions.size  # None: the model's native size
    negative_prompt: str = SamplingOptions.negative_prompt
    dtype: str = SamplingOptions.dtype  # auto: float16 on CUDA, float32 on the CPU


@dataclass
class GenerationResult:
    """What a `generate_folder` call did."""

    folder: Path
    written: int  # images drawn in this call
    skipped: int  # images found from an earlier run
    total: int


def image_name(prompt_index: int, seed: int) -> str:
    """The file name of one image in a generation folder."""
    return f"p{prompt_index:05d}-s{seed}.png"


def _read_metadata(folder: Path) -> tuple[dict[tuple[int, int], dict], bool]:
    """The metadata rows of the images already written, by (prompt_index, seed) in file order (a later line
    wins), and whether the file also holds lines that do not count (a line cut short by a crash, an image that
    is gone, an image listed twice), which the next rewrite drops."""
    path = folder / METADATA
    if not path.is_file():
        return {}, False
    rows: dict[tuple[int, int], dict] = {}
    text = path.read_text()
    lines = text.splitlines()
    for line in lines:
        try:
            row = json.loads(line)
            key = (int(row["prompt_index"]), int(row["seed"]))
        except (ValueError, KeyError, TypeError):
            continue  # its image is drawn again
        if (folder / str(row.get("file_name", ""))).is_file():
            rows.pop(key, None)
            rows[key] = row
    return rows, len(rows) != len(lines) or bool(lines and not text.endswith("\n"))


def _salvage(folder: Path, rows: dict[tuple[int, int], dict]) -> int:
    """Add to `rows` the images of batches recorded by a job that stopped before writing them into
    `metadata.jsonl` (killed, or one of its processes failed); returns how many. A record that cannot be read
    counts for nothing: its batch is drawn again."""
    added = 0
    for path in sorted((folder / RECORDS).glob("chunk-*.json")):
        try:
            drawn = json.loads(path.read_text())["rows"]
            keyed = [((int(row["prompt_index"]), int(row["seed"])), row) for row in drawn]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for key, row in keyed:
            if key not in rows and (folder / str(row.get("file_name", ""))).is_file():
                rows[key] = row
                added += 1
    return added


def _write_metadata(folder: Path, keys: Sequence[tuple[int, int]], rows: dict[tuple[int, int], dict]) -> None:
    """Write `metadata.jsonl`: the rows of `keys` (this job's images) in that order, then the other images of
    the folder (seeds or prompts of earlier runs) in their earlier order."""
    wanted = set(keys)
    ordered = [rows[key] for key in keys if key in rows] + [row for key, row in rows.items() if key not in wanted]
    atomic_write_text(folder / METADATA, "".join(json.dumps(row) + "\n" for row in ordered))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as weights:
        while chunk := weights.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def weights_digests(model: ModelSpec) -> dict[str, str]:
    """The sha256 of every weights file `model` reads from this disk (a local pipeline folder's and a
    fine-tuned UNet's safetensors files, each LoRA file), by path: what tells a retrained run at the same
    path from the one whose images a folder holds."""
    files = []
    for folder in (resolve_local(model.pipeline), Path(model.unet) if model.unet else None):
        if folder is not None and folder.is_dir():
            files += sorted(folder.rglob("*.safetensors"))
    files += [lora_file(path) for path, _ in model.loras]
    return {str(path): _sha256(path) for path in files}


def _check_weights(folder: Path, old: dict, new: dict[str, str]) -> None:
    if WEIGHTS not in old:
        return
    for path in sorted(set(old[WEIGHTS]) | set(new)):
        then, now = old[WEIGHTS].get(path), new.get(path)
        if then != now:
            change = "is new" if then is None else "is gone" if now is None else (
                f"changed since (sha256 {then[:12]}... then, {now[:12]}... now)")
            raise ValueError(
                f"{folder} was drawn from other weights: {path} {change}; give another output folder (or delete "
                "this one) rather than mixing two models' images"
            )


def _check_settings(folder: Path, settings: dict, weights: dict[str, str]) -> None:
    path = folder / SETTINGS
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    for key, value in settings.items():
        if key in old and old[key] != value:
            raise ValueError(
                f"{folder} was generated with {key}={old[key]!r}, not {value!r}: give another output folder "
                "(or delete this one) rather than mixing two settings in one folder"
            )
    _check_weights(folder, old, weights)


def _start(folder: Path, model: ModelSpec, prompts: PromptSet, seeds: Sequence[int], recorded: dict,
           keys: Sequence[tuple[int, int]]) -> None:
    """The main process's part before any image is drawn: take in the batches a stopped job recorded, refuse
    a folder of other settings, weights or prompts, write `generation.json`, and leave `metadata.jsonl` whole
    (every image written so far, every line complete) with no records beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, untidy = _read_metadata(folder)
    salvaged = _salvage(folder, rows)
    weights = weights_digests(model)
    if rows:  # settings bind a folder once it holds images: a run that failed before drawing any binds nothing
        _check_settings(folder, recorded, weights)
    for index, seed in keys:
        row = rows.get((index, seed))
        text = prompts.prompts[index].text
        if row is not None and row.get("prompt") != text:
            raise ValueError(
                f"{folder}: image {image_name(index, seed)} was drawn for prompt {row.get('prompt')!r}, but prompt "
                f"{index} of {prompts.name} is {text!r}: this folder belongs to another prompt set"
            )
    atomic_write_text(
        folder / SETTINGS,
        json.dumps({**recorded, "prompt_set": prompts.name, "prompt_source": prompts.source,
                    "prompts": len(prompts.prompts), "seeds": [int(s) for s in seeds], WEIGHTS: weights}, indent=2),
    )
    if salvaged or untidy:
        _write_metadata(folder, keys, rows)
    shutil.rmtree(folder / RECORDS, ignore_errors=True)


def generate_folder(
    model: ModelSpec,
    prompts: PromptSet,
    seeds: Sequence[int],
    out: str | Path,
    sampling: SamplingSettings | None = None,
    batch_size: int = 16,
    device: str | None = None,
    progress: bool = True,
    processes: Processes | None = None,
) -> GenerationResult:
    """Draw every (prompt, seed) of `prompts` × `seeds` with `model` into `out`, skipping those already there.

    Image i of a batch starts from the noise of its own seed (a CPU generator), so an image depends
    only on (model, prompt, seed, settings), not on batching, order or device (up to float rounding).
    The images in set order make batches of `batch_size`; under a distributed launcher process r of N draws
    batches r, r + N, ... (their missing images, in one pipeline call each, as one process draws them), and
    the main process writes `metadata.jsonl` in image order once every batch is drawn.
    """
    from ..sampling.generate import default_device, generate, load_pipeline, resolve_dtype

    processes = processes or current_processes()
    sampling = sampling or SamplingSettings()
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size}: give at least 1 (the images drawn per pipeline call)")
    device = processes.device(device) or default_device()
    dtype = resolve_dtype(sampling.dtype, device)
    folder = check_output_folder(out)
    recorded = {**model.as_dict(), **asdict(sampling), "dtype": dtype}
    recorded.pop("name")
    items = [(index, prompt, int(seed)) for index, prompt in enumerate(prompts.prompts) for seed in seeds]
    keys = [(index, seed) for index, _, seed in items]
    if processes.is_main:
        _start(folder, model, prompts, seeds, recorded, keys)
    prepare_status(processes, folder)

    done, _ = _read_metadata(folder)
    batches = [items[start : start + batch_size] for start in range(0, len(items), batch_size)]
    todo = [(number, missing) for number, batch in enumerate(batches)
            if (missing := [item for item in batch if (item[0], item[2]) not in done])]
    drawn = sum(len(batch) for _, batch in todo)
    result = GenerationResult(folder, drawn, len(items) - drawn, len(items))
    if not todo:
        return result

    def describe(position: int) -> str:
        number, batch = todo[position]
        (first, _, first_seed), (last, _, last_seed) = batch[0], batch[-1]
        return f"batch {number} ({image_name(first, first_seed)} to {image_name(last, last_seed)})"

    job = {"settings": read_shared(folder / SETTINGS), "batch_size": batch_size, "batches": [number for number, _ in todo]}
    records = ChunkRecords(folder / RECORDS, fingerprint(job), len(todo), describe)
    with job_progress(processes, folder, "generate", total=len(items), initial=len(items) - drawn,
                      desc=f"generate {model.name}", unit="img", enabled=progress) as bar:
        pipe = size = None
        for position in processes.share(len(todo)):
            if pipe is None:
                pipe = load_pipeline(model.pipeline, device=device, dtype=dtype, loras=model.loras, unet=model.unet,
                                     sampler=sampling.sampler)
                size = sampling.size or pipe.unet.config.sample_size * pipe.vae_scale_factor
            _, batch = todo[position]
            images = generate(
                pipe, [p.text for _, p, _ in batch], [s for _, _, s in batch], sampling.steps, sampling.guidance,
                size, batch_size=len(batch), negative_prompt=sampling.negative_prompt,
            )
            rows = []
            for (index, prompt, seed), image in zip(batch, images):
                name = image_name(index, seed)
                atomic_write(folder / name, lambda out, im=image: Image.fromarray(im).save(out, format="PNG"))
                rows.append({"file_name": name, "prompt": prompt.text, "prompt_index": index,
                             "category": prompt.category, "seed": seed, **recorded, "width": size, "height": size})
            records.write(position, {"rows": rows})
            bar.update(len(batch))
    if processes.is_main:
        for record in records.read_all(processes):
            done.update({(row["prompt_index"], row["seed"]): row for row in record["rows"]})
        _write_metadata(folder, keys, done)
        records.clear()
    return result

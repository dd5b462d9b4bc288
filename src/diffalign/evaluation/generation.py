"""`diffalign generate`: images for a prompt set × seeds, written as a resumable, self-describing folder.

Each image is `p{prompt_index:05d}-s{seed}.png`, written atomically; a line in `metadata.jsonl`
(the Hugging Face imagefolder convention, so `diffalign score FOLDER` reads it) records its prompt,
seed and every setting. `generation.json` holds the settings that shape the images and the sha256 of
the local weights files. A rerun skips the images already written, so a stopped run continues where
it stopped; a rerun with other settings, or with weights changed at the same path (a run trained
further), is refused (naming the setting or file) instead of mixing two models in one folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from ..files import atomic_write, atomic_write_text, check_output_folder
from ..models.lora_files import lora_file
from ..paths import resolve_local
from .model_specs import ModelSpec
from .prompt_sets import PromptSet

METADATA = "metadata.jsonl"
SETTINGS = "generation.json"
WEIGHTS = "weights_sha256"  # the key of generation.json that records `weights_digests`


@dataclass
class SamplingSettings:
    """How images are drawn; every field shapes the pixels and is recorded with each image."""

    sampler: str = "ddim"
    steps: int = 20
    guidance: float = 5.0
    size: int | None = None  # None: the model's native size
    negative_prompt: str = ""
    dtype: str = "auto"  # auto: float16 on CUDA, float32 on the CPU


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


def _done(folder: Path) -> dict[tuple[int, int], str]:
    """(prompt_index, seed) -> prompt text of the images already written (their file and metadata line exist).

    `metadata.jsonl` is rewritten without the lines that do not count (a line cut short by a crash, an
    image that is gone), so that appending to it again leaves every line whole.
    """
    done: dict[tuple[int, int], str] = {}
    path = folder / METADATA
    if not path.is_file():
        return done
    kept = []
    text = path.read_text()
    lines = text.splitlines()
    for line in lines:
        try:
            row = json.loads(line)
            key = (int(row["prompt_index"]), int(row["seed"]))
        except (ValueError, KeyError, TypeError):
            continue  # its image is drawn again
        if (folder / str(row.get("file_name", ""))).is_file():
            done[key] = row.get("prompt", "")
            kept.append(line)
    if len(kept) != len(lines) or (lines and not text.endswith("\n")):
        atomic_write_text(path, "".join(line + "\n" for line in kept))
    return done


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


def generate_folder(
    model: ModelSpec,
    prompts: PromptSet,
    seeds: Sequence[int],
    out: str | Path,
    sampling: SamplingSettings | None = None,
    batch_size: int = 16,
    device: str | None = None,
    progress: bool = True,
) -> GenerationResult:
    """Draw every (prompt, seed) of `prompts` × `seeds` with `model` into `out`, skipping those already there.

    Image i of a batch starts from the noise of its own seed (a CPU generator), so an image depends
    only on (model, prompt, seed, settings), not on batching, order or device (up to float rounding).
    """
    from ..sampling.generate import (
        default_device,
        generate,
        load_pipeline,
        resolve_dtype,
    )

    sampling = sampling or SamplingSettings()
    device = device or default_device()
    dtype = resolve_dtype(sampling.dtype, device)
    folder = check_output_folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    recorded = {**model.as_dict(), **asdict(sampling), "dtype": dtype}
    recorded.pop("name")
    weights = weights_digests(model)
    done = _done(folder)
    if done:  # settings bind a folder once it holds images: a run that failed before drawing any binds nothing
        _check_settings(folder, recorded, weights)
    todo = []
    for index, prompt in enumerate(prompts.prompts):
        for seed in seeds:
            key = (index, int(seed))
            if key in done:
                if done[key] != prompt.text:
                    raise ValueError(
                        f"{folder}: image {image_name(*key)} was drawn for prompt {done[key]!r}, but prompt "
                        f"{index} of {prompts.name} is {prompt.text!r}: this folder belongs to another prompt set"
                    )
                continue
            todo.append((index, prompt, int(seed)))
    total = len(prompts.prompts) * len(seeds)
    atomic_write_text(
        folder / SETTINGS,
        json.dumps({**recorded, "prompt_set": prompts.name, "prompt_source": prompts.source,
                    "prompts": len(prompts.prompts), "seeds": [int(s) for s in seeds], WEIGHTS: weights}, indent=2),
    )
    if not todo:
        return GenerationResult(folder, 0, total - len(todo), total)

    pipe = load_pipeline(model.pipeline, device=device, dtype=dtype, loras=model.loras, unet=model.unet,
                         sampler=sampling.sampler)
    size = sampling.size or pipe.unet.config.sample_size * pipe.vae_scale_factor
    bar = tqdm(total=len(todo), desc=f"generate {model.name}", unit="img", disable=not progress)
    with (folder / METADATA).open("a") as metadata:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            images = generate(
                pipe, [p.text for _, p, _ in batch], [s for _, _, s in batch], sampling.steps, sampling.guidance,
                size, batch_size=len(batch), negative_prompt=sampling.negative_prompt,
            )
            for (index, prompt, seed), image in zip(batch, images):
                name = image_name(index, seed)
                atomic_write(folder / name, lambda out, im=image: Image.fromarray(im).save(out, format="PNG"))
                row = {"file_name": name, "prompt": prompt.text, "prompt_index": index, "category": prompt.category,
                       "seed": seed, **recorded, "width": size, "height": size}
                metadata.write(json.dumps(row) + "\n")
            metadata.flush()
            os.fsync(metadata.fileno())
            bar.update(len(batch))
    bar.close()
    return GenerationResult(folder, len(todo), total - len(todo), total)

"""The Python API: the calls behind `diffalign train`, `eval` and `score`, for notebooks and scripts.

    import diffalign
    cfg = diffalign.load_config("configs/demo/dpo.yaml", train__max_steps=50, objective__beta=5000)
    run = diffalign.train(cfg)                        # run.folder, run.metrics (the last logged step)
    result = diffalign.evaluate(run.folder, prompts="demo", seeds=2)     # result.folder, result.results
    scores = diffalign.score(images, "a red circle on a blue background", scorer="shapes")

Settings are the config keys of `diffalign config keys`, given as keyword arguments with `__` for each dot
(`train__max_steps=50` is `train.max_steps=50` on the command line), as `"key=value"` strings in the command
line's form, or as a mapping of dotted keys to values (`{"train.max_steps": 50}`). The command line calls the
same functions, so a setting is refused with the same message in both.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config.core import ConfigError, apply_overrides, from_dict, to_dict, variant_switches
from .config.core import load_config as load_config_file
from .config.schema import RunConfig

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from .data.image_inputs import ImageItem
    from .evaluation.evaluate import EvalJob, EvalOptions
    from .evaluation.generation import SamplingOptions, SamplingSettings
    from .evaluation.model_specs import ModelSpec
    from .evaluation.prompt_sets import PromptSet
    from .evaluation.score_job import ScoreJob
    from .evaluation.scoring import ScoreRun

# --- configs -------------------------------------------------------------------------------------------------


def _override_text(key: str, value: Any) -> str:
    """`key=value` in the command line's form, the value written as YAML (JSON is YAML) so it reads back as given."""
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, float) and not math.isfinite(value):
        text = ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    else:
        text = json.dumps(value, default=str)
    return f"{key}={text}"


def override_strings(overrides: Sequence[str | Mapping[str, Any]] = (), settings: Mapping[str, Any] | None = None
                     ) -> list[str]:
    """The `key=value` strings of overrides given as strings, mappings of dotted keys, and keyword settings
    (`train__max_steps=5` -> `train.max_steps=5`), in that order."""
    texts: list[str] = []
    for item in overrides:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, Mapping):
            texts += [_override_text(str(key), value) for key, value in item.items()]
        else:
            raise ConfigError(f"override {item!r}: give 'key=value' strings, a mapping of dotted keys to values, "
                              "or keyword arguments such as train__max_steps=50")
    texts += [_override_text(key.replace("__", "."), value) for key, value in (settings or {}).items()]
    return texts


def load_config(config: str | Path | RunConfig | None = None, *overrides: str | Mapping[str, Any],
                **settings: Any) -> RunConfig:
    """The validated run config of `diffalign train CONFIG key=value ...`: the YAML file `config` (with its
    `base:` files; None: the embedded demo; a RunConfig: that config), then the overrides: `"key=value"` strings,
    mappings of dotted keys to values, and keyword settings with `__` for each dot (`train__max_steps=50`).
    Raises ConfigError (a ValueError) naming every bad key or value."""
    texts = override_strings(overrides, settings)
    if isinstance(config, RunConfig):
        switches = variant_switches(RunConfig)
        return from_dict(RunConfig, apply_overrides(to_dict(config), texts, switches), source="overrides")
    return load_config_file(RunConfig, config, texts)


# --- training ------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """A finished training run: its folder, weights and config file, its last logged metrics and every logged
    step's (`metrics.jsonl`)."""

    folder: Path
    weights: Path
    config: Path
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    is_main_process: bool = True


def read_metrics(folder: str | Path) -> list[dict[str, float]]:
    """Every logged step's metrics of the run in `folder`, from its metrics.jsonl (empty when it logged none)."""
    from .training.run_folder import METRICS_FILE

    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def train(config: str | Path | RunConfig | None = None, *overrides: str | Mapping[str, Any],
          **settings: Any) -> TrainResult:
    """Train as `diffalign train` does, with the config of `load_config(config, *overrides, **settings)`; returns
    the run folder, weights, and the metrics logged in it. The config is checked before torch loads."""
    cfg = load_config(config, *overrides, **settings)
    from .training.loop import train as train_run  # heavy imports only when training

    done = train_run(cfg)
    history = read_metrics(done.output_dir) if done.is_main_process else []
    metrics = history[-1] if history else dict(done.metrics)
    return TrainResult(done.output_dir, done.weights, done.config, metrics, history, done.is_main_process)


# --- evaluation ----------------------------------------------------------------------------------------------


def parse_seeds(text: str | int | Sequence[int]) -> list[int]:
    """The seeds of `--seeds`: a count N -> 0..N-1; `A-B` -> A..B inclusive; `a,b,c` or a list -> those seeds."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    elif not isinstance(text, str):
        seeds = list(text)
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise ValueError(f"seeds {seeds!r}: expected a non-empty list of integers")
        return seeds
    try:
        if "," in text:
            return [int(s) for s in text.split(",") if s.strip()]
        if "-" in text.strip("-"):
            low, high = text.split("-", 1)
            return list(range(int(low), int(high) + 1))
        count = int(text)
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected a count N (seeds 0..N-1), a range A-B or a list a,b,c") from None
    if count < 1:
        raise ValueError(f"--seeds {text!r}: give at least one seed")
    return list(range(count))


def sampling_inputs(options: SamplingOptions) -> tuple[PromptSet, list[int], SamplingSettings]:
    """The prompt set, seeds and sampling settings that the sampling options of `generate` and `eval` name,
    checked."""
    from .evaluation.generation import SamplingSettings
    from .evaluation.prompt_sets import load_prompt_set
    from .sampling.generate import SAMPLERS

    if options.sampler not in SAMPLERS:
        raise ValueError(f"--sampler {options.sampler!r}: expected one of {', '.join(SAMPLERS)}")
    prompt_set = load_prompt_set(str(options.prompts), limit=options.max_prompts)
    if not prompt_set.prompts:
        raise ValueError(f"--prompts {options.prompts}: the set is empty")
    settings = SamplingSettings(options.sampler, options.steps, options.guidance, options.size,
                                options.negative_prompt, options.dtype)
    return prompt_set, parse_seeds(options.seeds), settings


def job_options(job: type, caller: str, options: Mapping[str, Any], **given: Any) -> Any:
    """`job(**given, **options)` once every name in `options` is one of the job's fields (those in `given` are
    the caller's own parameters); an unknown name raises a ValueError naming it, the closest option and every
    option."""
    import dataclasses

    known = [f.name for f in dataclasses.fields(job) if f.init and f.name not in given]
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"{caller}: unknown option {name!r}; {hint}options: {', '.join(known)}")
    return job(**given, **options)


def split_named(text: str) -> tuple[str | None, str]:
    """`NAME=PATH` -> (NAME, PATH); a bare PATH -> (None, PATH)."""
    name, sep, path = text.partition("=")
    if sep and name and "/" not in name:
        return name, path
    return None, text


def default_base(tuned: str) -> str | None:
    """The base model a tuned model names: its run's `model.pretrained` or a fused folder's `fused_from.json`."""
    from .evaluation.model_specs import parse_lora, run_base_model

    path = Path(parse_lora(tuned)[0]).expanduser()
    fused = path / "fused_from.json"
    if fused.is_file():
        return json.loads(fused.read_text()).get("base")
    return run_base_model(path) if path.is_dir() else None


def check_tuned_exists(source: str, base: str | None) -> None:
    """FileNotFoundError when a tuned model is neither an existing folder nor, with a base given, a hub id."""
    from .evaluation.model_specs import parse_lora
    from .paths import looks_local, resolve_local

    path = parse_lora(source)[0] if "@" in source else source
    if resolve_local(path) is None and (base is None or looks_local(path)):
        raise FileNotFoundError(
            f"{path} does not exist: `eval` takes a `diffalign train` run, a LoRA folder, a full fine-tuning run "
            "or a pipeline folder (or a hub id, with --base)"
        )


def _named_sources(tuned: str | Path | Sequence[str | Path] | Mapping[str, str | Path]) -> list[str]:
    """The tuned models as `[NAME=]SOURCE` strings."""
    if isinstance(tuned, Mapping):
        return [f"{name}={source}" for name, source in tuned.items()]
    if isinstance(tuned, (str, Path)):
        return [str(tuned)]
    return [str(source) for source in tuned]


def eval_models(tuned: Sequence[str], base: str | None = None) -> tuple[ModelSpec, list[ModelSpec]]:
    """The base and tuned ModelSpecs of `[NAME=]TUNED[@SCALE]` strings; tuned names default to `tuned` (one
    model) or their folder names, the base to the first run's `model.pretrained` (or a fused folder's base)."""
    from .evaluation.model_specs import resolve_model

    named = [split_named(t) for t in tuned]
    if not named:
        raise ValueError("nothing to compare: give at least one tuned model")
    for _, source in named:
        check_tuned_exists(source, base)
    base_source = base or next((b for _, t in named if (b := default_base(t))), None)
    if base_source is None:
        raise FileNotFoundError(
            f"no base model: {tuned[0]} has no config.yaml or fused_from.json naming one; give --base MODEL"
        )
    models = []
    for name, source in named:
        if name is None and len(named) == 1:
            name = "tuned"
        models.append(resolve_model(source, base=base_source, name=name))
    return resolve_model(base_source, name="base"), models


def eval_job(tuned: str | Path | Sequence[str | Path] | Mapping[str, str | Path] | EvalOptions,
             base: str | Path | None = None, **options: Any) -> EvalJob:
    """The checked job of `diffalign eval`: tuned models as a path, a list of `[NAME=]PATH[@SCALE]` or a
    {name: path} mapping, and the command's options by their field names in `EvalOptions` (scorers as names or
    one comma-separated string; scorer options as `NAME.key=value` strings or {scorer: {key: value}}; `out`
    defaults to RUN/eval for a run folder, else ./eval), or an `EvalOptions` holding all of them. An unknown
    option raises a ValueError naming it."""
    from .evaluation.evaluate import EvalJob, EvalOptions
    from .evaluation.model_specs import parse_lora
    from .evaluation.scoring import scorer_choice
    from .files import check_output_folder

    if isinstance(tuned, EvalOptions):
        if options or base is not None:
            raise ValueError("eval_job: give the options in the EvalOptions or as keywords, not both")
        opts = tuned
    else:
        opts = job_options(EvalOptions, "eval_job", options, tuned=tuned, base=base)
    sources = _named_sources(opts.tuned)
    base_model, tuned_models = eval_models(sources, None if opts.base is None else str(opts.base))
    prompt_set, seed_list, sampling = sampling_inputs(opts)
    names, scorer_options, _ = scorer_choice(opts.scorers, opts.scorer_options)
    first = Path(parse_lora(split_named(sources[0])[1])[0]).expanduser()
    out = opts.out
    folder = check_output_folder(Path(out) if out else (first / "eval" if first.is_dir() else Path("eval")), "--out")
    return EvalJob(
        base=base_model, tuned=tuned_models, prompts=prompt_set, seeds=seed_list, sampling=sampling, scorers=names,
        scorer_options=scorer_options, tie_tolerance=opts.tie_tolerance, resamples=opts.resamples,
        batch_size=opts.batch_size, device=opts.device, grid_prompts=opts.grid_prompts, grid_seeds=opts.grid_seeds,
        out=folder, progress=opts.progress,
    )


@dataclass
class EvalResult:
    """A finished eval: its folder (results.json, scores.csv, report.html ...) and the results.json content
    (None on a process other than the main one)."""

    folder: Path
    results: dict | None


def evaluate(tuned: str | Path | Sequence[str | Path] | Mapping[str, str | Path], base: str | Path | None = None,
             **options: Any) -> EvalResult:
    """Compare tuned models with their base as `diffalign eval` does: every prompt x seed drawn by each model,
    scored, compared and reported in `out` (default RUN/eval); `options` are the command's, by their field names
    in `evaluation.evaluate.EvalOptions` (prompts, seeds, scorers, out, steps, max_prompts, sampler, guidance,
    scorer_options, batch_size, device, progress ...). Returns the output folder and the content of its
    results.json."""
    from .evaluation.evaluate import EvalOptions, run_eval
    from .processes import current_processes

    job = eval_job(job_options(EvalOptions, "evaluate", options, tuned=tuned, base=base))
    return EvalResult(Path(job.out), run_eval(job, current_processes()))


# --- scoring -------------------------------------------------------------------------------------------------


def score_job(items: Sequence[ImageItem], names: Sequence[str], options: Mapping[str, Mapping[str, Any]],
              device: str | None = None, dtype: str | None = None, batch_size: int | None = None,
              out: str | Path | None = None, progress: bool = True) -> tuple[ScoreJob, ScoreRun | None]:
    """Score `items` with the named scorers on this process's share of the batches (see
    evaluation/score_job.py), recorded beside `out` when given: the job, and the merged run on the main process
    (None on the others)."""
    from .evaluation.score_job import ScoreJob, score_settings
    from .evaluation.scoring import DEFAULT_CHUNK, build_scorers
    from .processes import current_processes

    processes = current_processes()
    on = processes.device(device)
    size = batch_size or DEFAULT_CHUNK
    plain = {name: dict(values) for name, values in options.items()}
    settings = score_settings(items, names, plain, device, dtype, size)
    job = ScoreJob(items, size, None if out is None else str(out), settings, processes)
    job.open()
    run = job.run(lambda: build_scorers(names, plain, on, dtype, batch_size), progress=progress)
    return job, run


def _image_item(index: int, image: Any, prompt: str) -> ImageItem:
    """An in-memory image, array or image file as a scorable item."""
    from functools import partial

    import numpy as np
    from PIL import Image

    from .data.image_inputs import ImageItem, open_image

    if isinstance(image, (str, Path)):
        path = Path(image).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"image {index} ({path}): no such file")
        return ImageItem(str(path), prompt, partial(open_image, path))
    if isinstance(image, np.ndarray):
        image = _array_image(index, image)
    if not isinstance(image, Image.Image):
        raise ValueError(f"image {index}: a {type(image).__name__}; give PIL images, HxWxC arrays or image paths")
    rgb = image.convert("RGB")
    return ImageItem(f"image {index}", prompt, lambda: rgb)


def _array_image(index: int, array: np.ndarray) -> Image.Image:
    """An HxW or HxWxC (C = 1, 3, 4) array as an image: uint8 as is, floats in [0, 1] scaled to 0-255."""
    import numpy as np
    from PIL import Image

    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValueError(f"image {index}: an array of shape {tuple(array.shape)}; expected HxW or HxWxC with "
                         "C = 1, 3 or 4 (channels last)")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating) or array.min() < 0 or array.max() > 1:
            raise ValueError(f"image {index}: a {array.dtype} array; give uint8 (0-255) or floats in [0, 1]")
        array = np.round(array * 255).astype(np.uint8)
    return Image.fromarray(array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array)


def score(images: Sequence[Any], prompts: str | Sequence[str], scorer: str = "shapes", *,
          device: str | None = None, dtype: str | None = None, batch_size: int | None = None,
          progress: bool = False, **options: Any) -> list[float]:
    """The score of each image for its prompt by one scorer (as `diffalign score` computes it): images as PIL
    images, HxWxC arrays or image paths; prompts one per image, or one for all; `options` go to the scorer's
    constructor (as `--scorer-option NAME.KEY=VALUE`). Raises ValueError naming the first image that could not
    be scored."""
    from .evaluation.scoring import check_scorer_names

    if not isinstance(scorer, str) or not scorer.strip():
        raise ValueError(f"scorer {scorer!r}: give one scorer name (`diffalign score --help` lists them)")
    check_scorer_names([scorer])
    images = list(images)
    texts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
    if len(texts) != len(images):
        raise ValueError(f"{len(images)} images but {len(texts)} prompts: give one prompt per image, or one string "
                         "for all")
    if not images:
        return []
    items = [_image_item(i, image, text) for i, (image, text) in enumerate(zip(images, texts))]
    _, run = score_job(items, [scorer], {scorer: options}, device, dtype, batch_size, progress=progress)
    if run is None:
        return []
    if run.failed:
        first = run.failed[0]
        raise ValueError(f"{len(run.failed)} of {len(items)} images could not be scored; "
                         f"{items[first].where}: {run.error_of(first)}")
    return [float(value) for value in run.scores[scorer]]

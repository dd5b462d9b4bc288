"""Model cards: the `README.md` written into every training run folder (and its `best/`).

A card is in the Hugging Face model-card format (`huggingface_hub.ModelCard`): YAML front matter (`base_model`,
`library_name: diffusers`, tags, the base model's `license` when it can be read without a download) and a body
saying what the weights are, the base model, the method and its settings, the data, the steps, the hardware and
wall time, how to load them and how to train them again. `diffalign eval` on a run folder adds (or replaces) the
card's evaluation section (`add_evaluation`): between two HTML-comment markers, so a re-eval rewrites it whole.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from huggingface_hub import ModelCard, ModelCardData, try_to_load_from_cache
from huggingface_hub.errors import HFValidationError
from huggingface_hub.repocard import metadata_load

from .. import __version__
from ..config.schema import RunConfig
from ..files import atomic_write_text
from .lora_files import LORA_WEIGHTS

CARD_FILE = "README.md"
EVAL_START = "<!-- diffalign:evaluation -->"
EVAL_END = "<!-- /diffalign:evaluation -->"
_EVAL_SECTION = re.compile(re.escape(EVAL_START) + r".*?" + re.escape(EVAL_END) + r"\n?", re.DOTALL)


@dataclass
class TrainingFacts:
    """What a run's card reports besides its config: how far it got, where and how long it ran."""

    cfg: RunConfig
    family: str  # "sd" (SD1.5, SD2.1) or "sdxl"
    steps: int  # optimizer steps the saved weights were trained for
    processes: int
    device: str  # the main process's device, named (e.g. "NVIDIA H100 80GB HBM3 (cuda)", "cpu")
    seconds: float | None  # wall time of this session of the run
    data: str  # what it trained on, as the batch source describes it
    unit: str = "pairs"  # what one entry of a batch is
    resumed_from: str | None = None  # the checkpoint this session continued
    note: str | None = None  # what these weights are, when not the final ones (best/)


def base_license(pretrained: str, revision: str | None = None) -> str | None:
    """The `license` of the base model's own card, read from a local folder or the hub cache (never
    downloaded); None when there is no card at hand or it names none."""
    folder = Path(pretrained).expanduser()
    path = folder / CARD_FILE
    if folder.exists():
        if not path.is_file():
            return None
    else:
        try:
            cached = try_to_load_from_cache(pretrained, CARD_FILE, revision=revision)
        except HFValidationError:  # not a hub id either
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        license_ = (metadata_load(path) or {}).get("license")
    except (ValueError, yaml.YAMLError, OSError, UnicodeDecodeError):
        return None
    return license_ if isinstance(license_, str) else None


def _objective_summary(cfg: RunConfig) -> str:
    cls = type(cfg.objective)
    doc = (cls.__doc__ or "").strip().splitlines()
    return getattr(cls, "__variant_summary__", None) or (doc[0] if doc else cfg.objective.name)


def _objective_settings(cfg: RunConfig) -> dict[str, object]:
    """The objective's own hyper-parameters (every field but its name)."""
    return {f"objective.{f.name}": getattr(cfg.objective, f.name)
            for f in dataclasses.fields(cfg.objective) if f.name != "name"}


def card_front_matter(facts: TrainingFacts) -> ModelCardData:
    """The card's YAML front matter."""
    cfg = facts.cfg
    tags = ["diffalign", "lora" if cfg.lora.enabled else "full-fine-tune",
            "stable-diffusion-xl" if facts.family == "sdxl" else "stable-diffusion", "text-to-image",
            cfg.objective.name]
    return ModelCardData(base_model=cfg.model.pretrained, library_name="diffusers", tags=tags,
                         license=base_license(cfg.model.pretrained, cfg.model.revision))


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that started this process, with the `diffalign` entry point named as users type it."""
    import shlex

    argv = list(sys.argv if argv is None else argv)
    program = Path(argv[0]).name if argv else "python"
    if program in ("main.py", "__main__.py") and "diffalign" in Path(argv[0]).parts:
        program = "diffalign"
    elif program.endswith(".py"):
        program = f"python {shlex.quote(argv[0])}"
    return " ".join([program, *(shlex.quote(a) for a in argv[1:])])


def _usage(folder: Path, cfg: RunConfig) -> str:
    base = cfg.model.pretrained
    revision = f", revision={cfg.model.revision!r}" if cfg.model.revision else ""
    if cfg.lora.enabled:
        load = (f"pipe = AutoPipelineForText2Image.from_pretrained({base!r}{revision}, torch_dtype=torch.float16)\n"
                f"pipe.load_lora_weights({str(folder)!r}, weight_name={LORA_WEIGHTS!r})")
        unet_import = ""
    else:
        load = (f"unet = UNet2DConditionModel.from_pretrained({str(folder / 'unet')!r}, torch_dtype=torch.float16)\n"
                f"pipe = AutoPipelineForText2Image.from_pretrained({base!r}{revision}, unet=unet, "
                f"torch_dtype=torch.float16)")
        unet_import = ", UNet2DConditionModel"
    return (f"```python\nimport torch\nfrom diffusers import AutoPipelineForText2Image{unet_import}\n\n{load}\n"
            f"pipe.to(\"cuda\")\nimage = pipe(\"a photo of an astronaut riding a horse\").images[0]\n```\n")


def _table(rows: dict[str, object]) -> str:
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {key} | {str(value).replace('|', '/')} |" for key, value in rows.items()]
    return "\n".join(lines) + "\n"


def training_card(folder: Path, facts: TrainingFacts) -> str:
    """The whole card (front matter and body) of the weights in `folder`."""
    cfg, t = facts.cfg, facts.cfg.train
    kind = (f"A LoRA adapter (rank {cfg.lora.rank}, alpha {cfg.lora.alpha:g}) for the UNet"
            if cfg.lora.enabled else "The fully fine-tuned UNet")
    family = "Stable Diffusion XL" if facts.family == "sdxl" else "Stable Diffusion"
    per_step = t.batch_size * t.grad_accum * facts.processes
    settings: dict[str, object] = {"objective.name": f"{cfg.objective.name} ({_objective_summary(cfg)})",
                                   **_objective_settings(cfg)}
    if cfg.lora.enabled:
        settings["lora"] = (f"rank {cfg.lora.rank}, alpha {cfg.lora.alpha:g}, dropout {cfg.lora.dropout:g}, "
                            f"on {', '.join(cfg.lora.target_modules)}")
    else:
        settings["lora"] = "off: full fine-tuning of the UNet"
    settings.update({
        "learning rate": f"{t.learning_rate:g} ({t.lr_scheduler}, {t.warmup_steps} warm-up steps"
                         f"{', scaled by the batch' if t.scale_lr else ''})",
        "batch": f"{t.batch_size} {facts.unit}/process x {t.grad_accum} accumulation x {facts.processes} "
                 f"process(es) = {per_step} {facts.unit} per optimizer step",
        "optimizer": t.optimizer, "mixed precision": t.mixed_precision, "seed": t.seed,
    })
    data = [facts.data.strip()]
    if cfg.data.relabel_with and facts.unit == "pairs":
        data.append(f"Relabelled by the scorer `{cfg.data.relabel_with}` (ties within "
                    f"{cfg.data.relabel_tie_tolerance:g} dropped).")
    data.append(f"{per_step * facts.steps} {facts.unit} seen in {facts.steps} optimizer steps.")
    session = (f"{facts.seconds:.0f} s" if facts.seconds is not None else "not recorded")
    if facts.resumed_from:
        session += f" (this session, resumed from {facts.resumed_from})"
    body = [
        f"# {cfg.objective.name.upper()} {'LoRA' if cfg.lora.enabled else 'fine-tune'} of {cfg.model.pretrained}\n",
        f"{kind} of `{cfg.model.pretrained}` ({family}), trained with diffalign {__version__}: "
        f"{_objective_summary(cfg)} (`objective.name={cfg.objective.name}`).\n",
        *([facts.note.strip() + "\n"] if facts.note else []),
        f"## Base model\n\n`{cfg.model.pretrained}`"
        f"{f' (revision {cfg.model.revision})' if cfg.model.revision else ''}, {family}.\n",
        f"## Method and settings\n\n{_table(settings)}",
        "## Data\n\n" + "\n\n".join(data) + "\n",
        f"## Training\n\n- steps: {facts.steps} of train.max_steps={t.max_steps}\n"
        f"- hardware: {facts.processes} process(es) on {facts.device}\n- wall time: {session}\n",
        f"## How to use\n\n{_usage(folder, cfg)}",
        f"## Reproduce\n\nTrained with diffalign {__version__}:\n\n```\n{command_line()}\n```\n\n"
        f"`diffalign train {folder / 'config.yaml'}` trains it again from the resolved settings.\n",
    ]
    return f"---\n{card_front_matter(facts).to_yaml()}\n---\n\n" + "\n".join(body)


def write_training_card(folder: str | Path, facts: TrainingFacts, shown: str | Path | None = None) -> Path:
    """Write `folder/README.md`, the card of the weights in `folder`, atomically (replacing an earlier card and
    its evaluation section, which described other weights); `shown` is where the card says the weights are
    (default `folder`; the final place of a folder written elsewhere first). Returns its path."""
    folder = Path(folder)
    path = folder / CARD_FILE
    atomic_write_text(path, training_card(Path(shown) if shown is not None else folder, facts))
    return path


def _interval(estimate: dict, percent: bool = False) -> str:
    """`value [low, high]` of a results.json estimate ({value, ci_low, ci_high}); n/a where undefined."""
    def show(x: float | None) -> str:
        if x is None:
            return "n/a"
        return f"{100 * x:.1f} %" if percent else f"{x:+.4g}"

    return f"{show(estimate.get('value'))} [{show(estimate.get('ci_low'))}, {show(estimate.get('ci_high'))}]"


def evaluation_section(results: dict, model: str, results_path: Path) -> str:
    """The card's evaluation section for tuned model `model` of a `diffalign eval` (its results.json dict,
    written to `results_path`): the prompt set, seeds, sampler, and per scorer the win rate over the base and
    the mean score difference, each with its 95 % bootstrap interval; between the section markers."""
    s = results["settings"]
    base = results["models"][0]
    rows = ["| scorer | win rate vs base [95 % CI] | wins / ties / losses | mean score difference [95 % CI] |",
            "|---|---|---|---|"]
    for scorer, by_model in results["comparisons"].items():
        c = by_model[model]
        rows.append(f"| {scorer} | {_interval(c['win_rate'], percent=True)} | {c['wins']} / {c['ties']} / "
                    f"{c['losses']} | {_interval(c['mean_difference'])} |")
    report = results_path.parent / results.get("files", {}).get("report", "report.html")
    return (
        f"{EVAL_START}\n## Evaluation\n\n"
        f"`diffalign eval` (diffalign {results.get('diffalign_version', __version__)}) against the base model "
        f"`{base['model']}` on the prompt set `{s['prompt_set']}` ({s['prompts']} prompts x seeds "
        f"{', '.join(str(x) for x in s['seeds'])} = {results['pairs']} paired images; {s['sampler']} {s['steps']} "
        f"steps, guidance {s['guidance']:g}, {s['width']}x{s['height']}), scored by "
        f"{', '.join(results['comparisons'])}. A win is an image scored higher than the base's for the same prompt "
        f"and seed (ties within {s['tie_tolerance']:g}); intervals are bootstrap 95 % intervals over prompts.\n\n"
        + "\n".join(rows) + "\n\n"
        f"Results: `{results_path}` (report: `{report}`).\n{EVAL_END}\n"
    )


def add_evaluation(folder: str | Path, section: str) -> Path:
    """Put `section` (from `evaluation_section`) into the card `folder/README.md` in place of its earlier
    evaluation section, or at its end; written atomically. Returns the card's path."""
    path = Path(folder) / CARD_FILE
    text = path.read_text(encoding="utf-8")
    if _EVAL_SECTION.search(text):
        text = _EVAL_SECTION.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    atomic_write_text(path, text)
    return path


def run_folder_of(model: dict) -> Path | None:
    """The training run folder a results.json model entry generates with as is (its LoRA at scale 1, or its
    `unet/`), or None for a hub model, a pipeline folder, a LoRA at another scale or several LoRAs."""
    loras = model.get("loras") or []
    if model.get("unet") and not loras:
        unet = Path(model["unet"])
        return unet.parent if unet.name == "unet" else None
    if len(loras) == 1 and not model.get("unet") and float(loras[0]["scale"]) == 1.0:
        return Path(loras[0]["path"])
    return None


def is_diffalign_card(path: Path) -> bool:
    """Whether `path` is a model card diffalign wrote (front matter tagged `diffalign`); a missing or unreadable
    file is not. ValueError naming the file when its front matter is not valid YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    try:
        data = ModelCard(text, ignore_metadata_errors=True).data
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: its front matter is not valid YAML ({str(error).splitlines()[0]})") from None
    except ValueError:
        return False
    return "diffalign" in (data.to_dict().get("tags") or [])


def update_run_cards(results: dict, out: str | Path) -> list[Path]:
    """Add the evaluation section of `diffalign eval`'s results (written to `out/results.json`) to the card of
    every tuned model that is a diffalign run folder as trained (replacing an earlier evaluation); the cards
    updated. Folders without a diffalign card are left alone; a card whose front matter does not parse is left
    alone with a warning."""
    results_path = Path(out) / "results.json"
    updated = []
    for model in results["models"][1:]:
        folder = run_folder_of(model)
        try:
            if folder is None or not is_diffalign_card(folder / CARD_FILE):
                continue
        except ValueError as error:  # the results are written: say why the card was left as it is, and go on
            print(f"warning: {error}; the evaluation was not added to it: fix it and rerun this eval (its images "
                  f"are reused)", file=sys.stderr)
            continue
        updated.append(add_evaluation(folder, evaluation_section(results, model["name"], results_path)))
    return updated

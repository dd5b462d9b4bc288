"""Tuned vs base: generate with identical prompts and seeds, score both, report means and win rates."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..rewards import build_scorer
from ..sampling.generate import generate, load_pipeline
from .prompts import load_prompts
from .winrate import paired_difference, win_tie_loss


@dataclass
class Comparison:
    """What `diffalign eval` compares and how."""

    base: str
    lora: str
    prompts: str
    seeds: Sequence[int] = (0, 1)
    steps: int = 20
    guidance: float = 5.0
    size: int | None = None
    scorer: str = "shapes"
    tie_tolerance: float = 0.0
    batch_size: int = 64
    device: str | None = None
    out_dir: Path = field(default_factory=lambda: Path("eval"))


def _save_images(images: np.ndarray, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:05d}.png")


def compare_with_base(c: Comparison) -> dict:
    """Generate every (prompt, seed) with the base and the tuned model, score both, write results.

    The tuned model `c.lora` is a LoRA folder or LoRA run (loaded onto the base), a full fine-tuning
    run (its `unet/` replaces the base's) or a whole pipeline folder (e.g. a fused on-policy round).

    Writes `results.json` (settings, mean/median scores, win/tie/loss with a 95 % Wilson interval of
    the win rate among non-tied pairs), `scores.csv` (one row per prompt and seed) and the images
    (`base/`, `tuned/`, numbered like the CSV rows) to `c.out_dir`; returns the results dict.
    """
    prompts = load_prompts(c.prompts)
    grid = [(p, s) for p in prompts for s in c.seeds]
    texts, seeds = [p for p, _ in grid], [s for _, s in grid]
    pipe = load_pipeline(c.base, device=c.device)
    base_images = generate(pipe, texts, seeds, c.steps, c.guidance, c.size, c.batch_size)
    tuned = Path(c.lora)
    if (tuned / "model_index.json").is_file():  # a whole pipeline (e.g. a fused on-policy round)
        pipe = load_pipeline(str(tuned), device=c.device)
    elif (tuned / "unet" / "config.json").is_file():  # a full fine-tuning run
        from diffusers import UNet2DConditionModel

        pipe.unet = UNet2DConditionModel.from_pretrained(tuned / "unet").to(pipe.device, pipe.unet.dtype)
    else:
        pipe.load_lora_weights(c.lora)
    tuned_images = generate(pipe, texts, seeds, c.steps, c.guidance, c.size, c.batch_size)

    scorer = build_scorer(c.scorer, device=c.device)
    base_scores = scorer.score(base_images, texts).numpy()
    tuned_scores = scorer.score(tuned_images, texts).numpy()
    criteria: dict[str, dict[str, float]] = {}
    if hasattr(scorer, "details"):  # scorers made of several criteria report each one's mean
        for side, images in (("base", base_images), ("tuned", tuned_images)):
            for key, mean in criterion_means(scorer.details(images, texts)).items():
                criteria.setdefault(key, {})[side] = mean
    wtl = win_tie_loss(tuned_scores, base_scores, c.tie_tolerance)
    results = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in c.__dict__.items()},
        "pairs": len(grid),
        "prompts": len(prompts),
        "scorer": c.scorer,
        "base": {"mean": float(base_scores.mean()), "median": float(np.median(base_scores))},
        "tuned": {"mean": float(tuned_scores.mean()), "median": float(np.median(tuned_scores))},
        "win_tie_loss": wtl.as_dict(),
        "difference": paired_difference(tuned_scores, base_scores).as_dict(),
        "criteria": criteria,
    }
    out = Path(c.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    with (out / "scores.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "prompt", "seed", "base", "tuned"])
        for i, ((prompt, seed), b, t) in enumerate(zip(grid, base_scores, tuned_scores)):
            writer.writerow([i, prompt, seed, f"{b:.6f}", f"{t:.6f}"])
    _save_images(base_images, out / "base")
    _save_images(tuned_images, out / "tuned")
    return results


def criterion_means(per_image: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each criterion over the images whose prompt names it (prompts name different criteria:
    only some captions give a size), in order of first appearance."""
    keys = list(dict.fromkeys(key for d in per_image for key in d))
    return {key: float(np.mean([d[key] for d in per_image if key in d])) for key in keys}


def _difference_line(results: dict) -> list[str]:
    d = results.get("difference")
    if not d:
        return []
    return [f"  tuned - base {d['mean']:+.4f} (95 % CI {d['ci_low']:+.4f} to {d['ci_high']:+.4f}, paired)"]


def format_results(results: dict) -> str:
    """A short human-readable summary of `compare_with_base` results."""
    w = results["win_tie_loss"]
    criteria = [
        f"  {name:12s} base {v['base']:.4f}   tuned {v['tuned']:.4f}"
        for name, v in results.get("criteria", {}).items()
        if name != "reward"
    ]
    return "\n".join(
        [
            f"{results['pairs']} prompt-seed pairs ({results['prompts']} prompts), scorer {results['scorer']}",
            f"  mean score   base {results['base']['mean']:.4f}   tuned {results['tuned']['mean']:.4f}",
            *_difference_line(results),
            *criteria,
            f"  tuned vs base: {w['wins']} wins, {w['ties']} ties (|diff| <= {w['tie_tolerance']:g}), {w['losses']} losses",
            f"  win rate among non-tied: {100 * w['win_rate']:.1f} % "
            f"(95 % CI {100 * w['ci_low']:.1f}-{100 * w['ci_high']:.1f} %)",
        ]
    )

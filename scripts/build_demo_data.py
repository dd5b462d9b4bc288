#!/usr/bin/env python
"""Build the embedded demo's preference pairs and held-out prompts from the tiny model's own samples.

    python scripts/build_demo_data.py --model assets/tiny-sd --out assets/demo

For `--groups` captions (every training caption of the shapes world in turn, held-out captions
excluded, each several times with new seeds), the tiny model draws `--k` images (DDIM 20 steps, CFG 5, recorded seeds); the rule-based `shapes`
reward scores them, and the best and the worst become a pair when their scores differ by at least
`--min-margin`. The pairs are written in the Pick-a-Pic v2 schema (`caption`, `jpg_0`, `jpg_1` as
PNG bytes, `label_0`, `label_1`, plus `score_*`, `seed_*`, `model_*`), the winner on a random side.
`prompts_heldout.txt` lists the held-out captions, which no training pair uses, for `diffalign eval`.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

from diffalign.data.pairs import write_pair_table
from diffalign.rewards import build_scorer
from diffalign.sampling.generate import generate, load_pipeline
from diffalign.synthetic.domain import split_specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="assets/tiny-sd", help="pipeline that draws the images")
    parser.add_argument("--out", type=Path, default=Path("assets/demo"), help="output folder")
    parser.add_argument("--groups", type=int, default=2400, help="caption groups (captions repeat with new seeds)")
    parser.add_argument("--k", type=int, default=4, help="images per caption; the best and worst make a pair")
    parser.add_argument("--min-margin", type=float, default=0.02, help="skip pairs whose rewards differ less")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps")
    parser.add_argument("--guidance", type=float, default=5.0, help="CFG scale")
    parser.add_argument("--seed", type=int, default=0, help="seed of the caption choice and of the image seeds")
    args = parser.parse_args()

    start = time.time()
    rng = random.Random(args.seed)
    train_specs, held_out_specs = split_specs()
    order = [s.caption for s in train_specs]
    captions: list[str] = []
    while len(captions) < args.groups:
        rng.shuffle(order)
        captions += order[: args.groups - len(captions)]
    texts = [c for c in captions for _ in range(args.k)]
    seeds = [100_000 + i for i in range(len(texts))]

    pipe = load_pipeline(args.model, device="cpu")
    print(f"drawing {len(texts)} images ({args.groups} groups of {args.k})", flush=True)
    images = generate(pipe, texts, seeds, args.steps, args.guidance, batch_size=64)
    scores = build_scorer("shapes").score(images, texts).numpy()

    rows: dict[str, list] = {k: [] for k in ("caption", "jpg_0", "jpg_1", "label_0", "label_1", "score_0",
                                              "score_1", "seed_0", "seed_1", "model_0", "model_1")}
    skipped = 0
    for p, caption in enumerate(captions):
        idx = np.arange(p * args.k, (p + 1) * args.k)
        best, worst = idx[np.argmax(scores[idx])], idx[np.argmin(scores[idx])]
        if scores[best] - scores[worst] < args.min_margin:
            skipped += 1
            continue
        first, second = (best, worst) if rng.random() < 0.5 else (worst, best)
        rows["caption"].append(caption)
        for side, i in enumerate((first, second)):
            rows[f"jpg_{side}"].append(images[i])
            rows[f"score_{side}"].append(float(scores[i]))
            rows[f"seed_{side}"].append(seeds[i])
            rows[f"model_{side}"].append(Path(args.model).name)
        label_0 = 1.0 if first == best else 0.0
        rows["label_0"].append(label_0)
        rows["label_1"].append(1.0 - label_0)

    args.out.mkdir(parents=True, exist_ok=True)
    path = write_pair_table(args.out / "pairs_train.parquet", rows)
    held_out = [s.caption for s in held_out_specs]
    (args.out / "prompts_heldout.txt").write_text(
        "# Held-out captions of the shapes world: no training pair uses them (diffalign.synthetic.domain.is_held_out)\n"
        + "\n".join(held_out) + "\n"
    )
    n = len(rows["caption"])
    margins = np.abs(np.array(rows["score_0"]) - np.array(rows["score_1"]))
    info = {
        "pairs": n,
        "skipped_small_margin": skipped,
        "mean_reward_of_samples": float(scores.mean()),
        "mean_margin": float(margins.mean()),
        "args": {k: str(v) for k, v in vars(args).items()},
        "minutes": (time.time() - start) / 60,
    }
    (args.out / "README.md").write_text(
        "# Demo preference pairs of the shapes world\n\n"
        "Made by `scripts/build_demo_data.py` from the embedded tiny model's own samples: for each training "
        f"caption, {args.k} images (DDIM {args.steps} steps, CFG {args.guidance}, seeds in `seed_0`/`seed_1`) were "
        "scored by the rule-based `shapes` reward; the best and the worst form a pair, labelled by the reward "
        f"(pairs whose rewards differ by less than {args.min_margin} were skipped).\n\n"
        "- `pairs_train.parquet`: Pick-a-Pic v2 schema (`caption`, `jpg_0`, `jpg_1` PNG bytes, `label_0`, "
        "`label_1`) plus `score_0/1`, `seed_0/1`, `model_0/1`.\n"
        "- `prompts_heldout.txt`: evaluation captions that no training pair uses.\n\n"
        f"```json\n{json.dumps(info, indent=2)}\n```\n"
    )
    print(json.dumps(info, indent=2))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()

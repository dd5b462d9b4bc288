#!/usr/bin/env python
"""Build the embedded demo's preference pairs and held-out prompts from the tiny model's own samples.

    python scripts/build_demo_data.py --model assets/tiny-sd --out assets/demo

For `--groups` captions (every training caption of the shapes world in turn, held-out captions
excluded, each several times with new seeds), the tiny model draws `--k` images (DDIM 20 steps, CFG 5, recorded seeds); the rule-based `shapes`
reward scores them, and the best and the worst become a pair when their scores differ by at least
`--min-margin`. This is `diffalign pairs --prompts demo --scorer shapes` (`diffalign.feedback.build_pairs`),
written as one file: `pairs_train.parquet` in the Pick-a-Pic v2 schema (`caption`, `jpg_0`, `jpg_1`
as PNG bytes, `label_0`, `label_1`, plus `score_*`, `seed_*`, `model_*`, `pref_prob_0`), the winner on
a random side. `prompts_heldout.txt` lists the held-out captions, which no training pair uses, for
`diffalign eval`. `README.md` is the dataset card.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path

from diffalign.feedback.build_pairs import PairsJob, build_pairs, demo_captions
from diffalign.data.cards import write_dataset_card
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

    work = args.out / ".build-pairs"  # a `diffalign pairs` folder: an interrupted build resumes
    job = PairsJob(
        prompts=demo_captions(args.groups, args.seed),
        prompts_source=f"demo ({args.groups} shapes-world training captions, seed {args.seed})",
        out=work,
        model=args.model,
        scorers=["shapes"],
        k=args.k,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        min_margin=args.min_margin,
        shard_size=args.groups,  # one shard: the demo data is one file
        device="cpu",
        batch_size=64,
        command=shlex.join([sys.executable, *sys.argv]),
    )
    result = build_pairs(job)
    path = args.out / "pairs_train.parquet"
    os.replace(work / result.shards[0]["file"], path)
    card = (work / "README.md").read_text().split("\n---\n", 1)[1]
    shutil.rmtree(work)
    held_out = [s.caption for s in split_specs()[1]]
    (args.out / "prompts_heldout.txt").write_text(
        "# Held-out captions of the shapes world: no training pair uses them (diffalign.synthetic.domain.is_held_out)\n"
        + "\n".join(held_out) + "\n"
    )
    write_dataset_card(
        args.out,
        "Demo preference pairs of the shapes world",
        "Made by `scripts/build_demo_data.py` (= `diffalign pairs --prompts demo --scorer shapes`) from the "
        "embedded tiny model's own samples.\n\n- `pairs_train.parquet`: the pairs.\n"
        "- `prompts_heldout.txt`: evaluation captions that no training pair uses.\n\n" + card.split("\n", 2)[2],
        {"pairs": result.totals.get("pairs", 0)},
        data_files="pairs_train.parquet",
    )
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): {result.totals}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""How often a sampler that keeps the best of K base images (by the reward) beats one base image.

A preference method trained on best-versus-worst-of-K pairs moves the model towards the best of K base
samples; this measures that target on held-out prompts, without training anything: for every prompt and
base seed, the base image is compared with the best of the first K images of other seeds ("pool").
The win rate among decided pairs and the mean reward gain come with 95 % CIs from a bootstrap over prompts.

    diffalign generate assets/tiny-sd --prompts demo --seeds 0-7 --sampler ddim --steps 20 --guidance 5 \\
        --out runs/best-of-k
    diffalign score runs/best-of-k --scorer shapes --out runs/best-of-k/scores.csv
    python scripts/best_of_k_winrate.py runs/best-of-k/scores.csv --base-seeds 0-2 --pool-seeds 3-7 --k 1,2,4,5

The score file is `diffalign score`'s CSV of a `diffalign generate` folder (images named p<prompt>-s<seed>.png).
"""

from __future__ import annotations

import argparse
import csv
import re
from collections import defaultdict

import numpy as np

from diffalign.evaluation.stats import compare_paired

NAME = re.compile(r"p(?P<prompt>\d+)-s(?P<seed>\d+)\.\w+$")


def read_rewards(path: str, scorer: str) -> dict[int, dict[int, float]]:
    """{prompt index: {seed: reward}} from a `diffalign score` CSV of a generation folder."""
    rewards: dict[int, dict[int, float]] = defaultdict(dict)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            match = NAME.search(row["file"])
            if match is None or not row.get(scorer):
                continue
            rewards[int(match["prompt"])][int(match["seed"])] = float(row[scorer])
    return dict(rewards)


def best_of_k(rewards: dict[int, dict[int, float]], base_seeds: list[int], pool_seeds: list[int], k: int) -> dict:
    """Win rate (decided pairs) and mean gain of the best of the first `k` pool seeds against each base seed."""
    best, base, prompts = [], [], []
    for prompt, by_seed in sorted(rewards.items()):
        if any(s not in by_seed for s in [*base_seeds, *pool_seeds[:k]]):
            continue  # an image of this prompt failed to score
        pool = [by_seed[s] for s in pool_seeds[:k]]
        for seed in base_seeds:
            best.append(max(pool))
            base.append(by_seed[seed])
            prompts.append(prompt)
    result = compare_paired(np.array(best), np.array(base), np.array(prompts))
    return {"k": k, "pairs": result.n, "win_rate": result.win_rate_decided.as_dict(),
            "gain": result.mean_difference.as_dict()}


def _seeds(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last) + 1)) if last else [int(s) for s in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scores", help="`diffalign score` CSV of a `diffalign generate` folder")
    parser.add_argument("--scorer", default="shapes")
    parser.add_argument("--base-seeds", default="0-2", help="seeds of the base images (A-B or a,b,c)")
    parser.add_argument("--pool-seeds", default="3-7", help="seeds the best is picked from, in order")
    parser.add_argument("--k", default="1,2,4,5", help="pool sizes")
    args = parser.parse_args()
    rewards = read_rewards(args.scores, args.scorer)
    base, pool = _seeds(args.base_seeds), _seeds(args.pool_seeds)
    print(f"{len(rewards)} prompts, base seeds {base}, pool seeds {pool}")
    for k in (int(x) for x in args.k.split(",")):
        r = best_of_k(rewards, base, pool, k)
        w, g = r["win_rate"], r["gain"]
        print(f"best of {k}: win rate {100 * w['value']:.1f} % ({100 * w['ci_low']:.1f}-{100 * w['ci_high']:.1f}), "
              f"mean gain {g['value']:+.3f} ({g['ci_low']:+.3f} to {g['ci_high']:+.3f}) over {r['pairs']} pairs")


if __name__ == "__main__":
    main()

"""`diffalign pairs`: build AI-feedback preference pairs from a model's own samples."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..feedback.pairs_job import PairsJob
from .options import add_options, job_values


def command_line() -> str:
    """The command as typed (for dataset cards)."""
    return shlex.join(["diffalign", *sys.argv[1:]])


MAX_LISTED_ERRORS = 20


def report_interrupted(out: str | Path) -> int:
    """Say that a resumable dataset job was interrupted and how to continue; its exit status (130)."""
    print(f"interrupted: finished shards are kept in {out}; rerun the same command to resume", file=sys.stderr)
    return 130


def report_left_out(source: str, errors: list[dict], out: Path, why: str) -> None:
    """List on stderr the rows a dataset job left out (`row`, optional `image`, `error`), the first 20."""
    if not errors:
        return
    print(f"{len(errors)} row(s) left out, {why}:", file=sys.stderr)
    for error in errors[:MAX_LISTED_ERRORS]:
        image = f" {error['image']}" if error.get("image") else ""
        print(f"  {source} row {error['row']}{image}: {error['error']}", file=sys.stderr)
    if len(errors) > MAX_LISTED_ERRORS:
        print(f"  ... and {len(errors) - MAX_LISTED_ERRORS} more: see {out / 'progress.json'}", file=sys.stderr)


def cmd_pairs(args: argparse.Namespace) -> int:
    from ..feedback.build_pairs import build_pairs

    job = PairsJob(**job_values(args, PairsJob), command=command_line())
    try:
        result = build_pairs(job)
    except KeyboardInterrupt:
        print(f"interrupted: finished prompts are kept in {args.out}; rerun the same command to resume", file=sys.stderr)
        return 130
    if result is None:  # not the main process: it reports for every process
        return 0
    t = result.totals
    print(
        f"{t.get('prompts', 0)} prompt(s) done ({result.prompts_done_now} in this run): {t.get('pairs', 0)} pairs, "
        f"{t.get('prompts_without_pairs', 0)} prompt(s) without a clear pair, {t.get('images_failed', 0)} image(s) "
        f"not scored; {len(result.shards)} shard(s) in {result.out}"
    )
    if not result.complete:
        print(f"{len(job.prompts) - t.get('prompts', 0)} prompt(s) left: rerun without --max-prompts (or a larger one) to continue")
    print(f"train on it: diffalign train data.path={result.out}")
    return 0


def add_pairs_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `pairs` subcommand."""
    p = sub.add_parser(
        "pairs",
        help="build AI-feedback preference pairs: K samples per prompt, scored, best vs worst",
        description="For each prompt, draw K images with a model (image j of prompt i from the noise of a seed\n"
        "derived from (--seed, i, j), recorded), score them with one or several scorers, and write pairs in\n"
        "the Pick-a-Pic v2 schema (parquet shards in OUT/data/, a dataset card OUT/README.md), the winner on\n"
        "a random side, with every scorer's score (score_<scorer>_0/1), the combined score (score_0/1),\n"
        "pref_prob_0 (P(image 0 preferred), the Bradley-Terry probability of the combined score),\n"
        "seed_0/1 and model_0/1.\n\n"
        "  --strategy best-worst   the best and the worst image of each prompt (one pair per prompt)\n"
        "  --strategy margin       every pair of the K images\n"
        "Either way a pair needs a combined-score margin of at least --min-margin (and above 0).\n\n"
        "Resumable: each prompt's pairs are saved as soon as they are made; rerunning the same command\n"
        "skips the prompts already done (--max-prompts N stops after the first N prompts).\n\n"
        "Several processes (GPUs, nodes): run it under `accelerate launch --num_processes N -m\n"
        "diffalign.cli.main pairs ...`; each process draws its share of the prompts (batch-size // k\n"
        "prompts a call, on its own GPU with --device cuda or no --device) and the main process writes\n"
        "the same shards as one process would. OUT must be on a filesystem every process sees; a stopped\n"
        "job resumes with the same command on any number of processes.",
        epilog="examples:\n"
        "  diffalign pairs --prompts demo --model assets/tiny-sd --scorer shapes --k 4 --out data/demo-pairs\n"
        "  diffalign pairs --prompts prompts.txt --model stabilityai/stable-diffusion-xl-base-1.0 --k 4 \\\n"
        "      --scorer pickscore,hpsv2.1 --weights 1,1 --strategy margin --min-margin 0.5 --out data/sdxl-ai\n"
        "  accelerate launch --num_processes 8 -m diffalign.cli.main pairs --prompts prompts.txt \\\n"
        "      --model stabilityai/stable-diffusion-xl-base-1.0 --scorer pickscore --out data/sdxl-ai\n"
        "  diffalign train data.path=data/demo-pairs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(p, PairsJob)
    p.set_defaults(func=cmd_pairs)

"""`diffalign pairs`: build AI-feedback preference pairs from a model's own samples."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..evaluation.model_specs import parse_lora


def parse_weights(text: str | None, names: list[str]) -> list[float] | None:
    """`--weights w1,w2` as floats, one per scorer; None when not given."""
    if text is None:
        return None
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise ValueError(f"--weights {text!r}: give one number per scorer, separated by commas") from None
    if len(weights) != len(names):
        raise ValueError(f"--weights {text!r}: {len(weights)} value(s) for {len(names)} scorer(s) ({', '.join(names)})")
    return weights


def scorer_choices(args: argparse.Namespace) -> tuple[list[str], dict[str, dict[str, object]], list[float] | None]:
    """Scorer names, their constructor options and weights from `--scorer`, `--scorer-option`, `--weights`."""
    from ..evaluation.scoring import check_scorer_names, parse_scorer_options, split_scorer_names
    from ..rewards import available_scorers

    names = split_scorer_names(args.scorer)
    if not names:
        raise ValueError(f"choose the scorer(s) with --scorer NAME[,NAME...]; available: {', '.join(available_scorers())}")
    check_scorer_names(names)
    return names, parse_scorer_options(args.scorer_option, names), parse_weights(args.weights, names)


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
    from ..feedback.build_pairs import DEMO_GROUPS, PairsJob, build_pairs, demo_captions
    from ..evaluation.prompts import load_prompts

    names, options, weights = scorer_choices(args)
    if args.prompts == "demo":
        prompts, source = demo_captions(DEMO_GROUPS, args.seed), f"demo ({DEMO_GROUPS} shapes-world training captions)"
    else:
        prompts, source = load_prompts(args.prompts), args.prompts
    job = PairsJob(
        prompts=prompts,
        prompts_source=source,
        out=Path(args.out),
        model=args.model,
        loras=[parse_lora(text) for text in args.lora],
        scorers=names,
        scorer_options=options,
        weights=weights,
        k=args.k,
        steps=args.steps,
        guidance=args.guidance,
        size=args.size,
        seed=args.seed,
        strategy=args.strategy,
        min_margin=args.min_margin,
        shard_size=args.shard_size,
        max_prompts=args.max_prompts,
        device=args.device,
        dtype=args.dtype,
        scorer_dtype=args.scorer_dtype,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        command=command_line(),
    )
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
        print(f"{len(prompts) - t.get('prompts', 0)} prompt(s) left: rerun without --max-prompts (or a larger one) to continue")
    print(f"train on it: diffalign train data.path={result.out}")
    return 0


def add_scorer_arguments(p: argparse.ArgumentParser) -> None:
    """`--scorer`, `--scorer-option`, `--weights`, shared by `pairs` and `relabel`."""
    p.add_argument("--scorer", action="append", default=[], metavar="NAME[,NAME...]",
                   help="scorer(s): registered names, file.py:NAME, package.module:NAME or remote:URL; repeat or separate with commas (required; `diffalign score --help` lists them)")
    p.add_argument("--scorer-option", action="append", default=[], metavar="NAME.KEY=VALUE",
                   help="constructor option of one scorer, e.g. pickscore.model=/path (repeatable)")
    p.add_argument("--weights", default=None, metavar="W[,W...]",
                   help="weight of each scorer in the combined score = sum of weight x raw score (default: 1 for one "
                   "scorer; each scorer's logit_scale for several, so the sum is in Bradley-Terry logits)")


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
    p.add_argument("--prompts", required=True, metavar="FILE|demo",
                   help="prompt file (.txt one per line, .csv/.tsv/.jsonl with a prompt column), or `demo`: the "
                   "shapes world's training captions as the embedded demo data draws them (2400, shuffled by --seed)")
    p.add_argument("--model", required=True, help="pipeline: hub id or local folder (e.g. assets/tiny-sd)")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[@SCALE]",
                   help="LoRA folder loaded with diffusers' load_lora_weights, at SCALE (default 1; repeatable)")
    p.add_argument("--out", required=True, help="output folder (created; a rerun resumes it)")
    add_scorer_arguments(p)
    p.add_argument("--k", type=int, default=4, help="images per prompt (default 4)")
    p.add_argument("--strategy", default="best-worst", choices=["best-worst", "margin"], help="how pairs are chosen")
    p.add_argument("--min-margin", type=float, default=0.0, help="smallest combined-score margin of a pair (default 0)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default 5)")
    p.add_argument("--size", type=int, default=None, help="image size (default: the model's native size)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image seeds, the winners' sides and the demo prompts")
    p.add_argument("--shard-size", type=int, default=1000,
                   help="rows per parquet shard (whole prompts: a shard closes once it has this many)")
    p.add_argument("--max-prompts", type=int, default=None, help="stop after the first N prompts (resume later)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available; under a launcher, "
                   "cuda is each process's own GPU)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="generator precision")
    p.add_argument("--scorer-dtype", default=None, choices=["auto", "fp32", "fp16", "bf16"],
                   help="scorer precision (default: each scorer's own)")
    p.add_argument("--batch-size", type=int, default=32, help="images per generation and scorer call (default 32)")
    p.add_argument("--overwrite", action="store_true", help="start over in OUT instead of resuming")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pairs)

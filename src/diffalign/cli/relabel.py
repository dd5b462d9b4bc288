"""`diffalign relabel`: re-score a Pick-a-Pic-schema dataset, keep the scores as columns, optionally re-decide labels."""

from __future__ import annotations

import argparse
from pathlib import Path

from .pairs import add_scorer_arguments, command_line, report_interrupted, report_left_out, scorer_choices


def cmd_relabel(args: argparse.Namespace) -> int:
    from ..feedback.relabel_dataset import RelabelJob, format_totals, relabel_dataset

    names, options, weights = scorer_choices(args)
    labels = "scorer" if args.flip else args.labels
    job = RelabelJob(
        source=args.source,
        out=Path(args.out),
        scorers=names,
        scorer_options=options,
        weights=weights,
        labels=labels,
        tie_tolerance=args.tie_tolerance,
        shard_size=args.shard_size,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        command=command_line(),
    )
    try:
        result = relabel_dataset(job)
    except KeyboardInterrupt:
        return report_interrupted(args.out)
    if result is None:  # another process of a launch: the main process merges and reports
        return 0
    report_left_out(args.source, result.errors, result.out, "an image could not be decoded or scored")
    print(format_totals(result.totals, labels))
    print(f"{len(result.shards)} shard(s) and a dataset card in {result.out}")
    return 1 if result.errors else 0


def add_relabel_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `relabel` subcommand."""
    p = sub.add_parser(
        "relabel",
        help="re-score a preference dataset with scorers; keep the scores, optionally re-decide the labels",
        description="Score jpg_0 and jpg_1 of every row of a Pick-a-Pic-schema dataset against its caption with\n"
        "one or several scorers and write a new dataset (parquet shards in OUT/data/, a dataset card\n"
        "OUT/README.md) with every original column plus score_<scorer>_0/1, the combined score score_0/1\n"
        "and pref_prob_0 = P(image 0 preferred) = sigmoid(logit_scale x (score_0 - score_1)), the\n"
        "Bradley-Terry preference probability of the combined score.\n\n"
        "  --labels keep     (default) the original labels stay; the flips the scorer would make are counted\n"
        "  --labels scorer   (or --flip) the combined score decides each pair, differences up to\n"
        "                    --tie-tolerance are ties (0.5/0.5): Diffusion-DPO's AI-feedback variant;\n"
        "                    the original label_0 is kept as original_label_0\n\n"
        "Rows with an image that cannot be decoded or scored are left out and listed (exit status 1).\n"
        "Resumable: shards are written one by one; rerunning the same command continues.\n\n"
        "Runs unchanged on many processes (GPUs, nodes):\n"
        "  accelerate launch --num_processes N -m diffalign.cli.main relabel SOURCE --out OUT ...\n"
        "process r scores shards r, r+N, ... on its own GPU (--device cuda or none); the main process merges\n"
        "them into what one process writes. A killed launch resumes with the same command, on any N.",
        epilog="examples:\n"
        "  diffalign relabel assets/demo/pairs_train.parquet --scorer shapes --flip --out data/demo-relabelled\n"
        "  diffalign relabel yuvalkirstain/pickapic_v2 --scorer pickscore --labels scorer --tie-tolerance 0.001 \\\n"
        "      --out /data/pickapic-ai --device cuda --batch-size 128\n"
        "  accelerate launch --num_processes 8 -m diffalign.cli.main relabel yuvalkirstain/pickapic_v2 \\\n"
        "      --scorer pickscore --flip --out /data/pickapic-ai --batch-size 128\n"
        "exit status: 0 every row written; 1 some rows left out (listed); 2 usage error; 130 interrupted.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="Pick-a-Pic-schema parquet file, folder of shards, glob or hub id")
    p.add_argument("--out", required=True, help="output folder (created; a rerun resumes it)")
    add_scorer_arguments(p)
    p.add_argument("--labels", default="keep", choices=["keep", "scorer"], help="keep the labels or let the scorer decide")
    p.add_argument("--flip", action="store_true", help="the same as --labels scorer")
    p.add_argument("--tie-tolerance", type=float, default=0.0,
                   help="with --labels scorer: combined-score differences up to this are ties (default: exact)")
    p.add_argument("--shard-size", type=int, default=1000, help="source rows per output shard (default 1000)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=["auto", "fp32", "fp16", "bf16"],
                   help="scorer precision (default: each scorer's own)")
    p.add_argument("--batch-size", type=int, default=32, help="images per scorer call (default 32)")
    p.add_argument("--overwrite", action="store_true", help="start over in OUT instead of resuming")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_relabel)

"""`diffalign relabel`: re-score a Pick-a-Pic-schema dataset, keep the scores as columns, optionally re-decide labels."""

from __future__ import annotations

import argparse

from .options import add_options, job_values
from .pairs import command_line, report_interrupted, report_left_out


def cmd_relabel(args: argparse.Namespace) -> int:
    from ..feedback.relabel_dataset import RelabelJob, format_totals, relabel_dataset

    job = RelabelJob(**job_values(args, RelabelJob), command=command_line())
    try:
        result = relabel_dataset(job)
    except KeyboardInterrupt:
        return report_interrupted(args.out)
    if result is None:  # another process of a launch: the main process merges and reports
        return 0
    report_left_out(args.source, result.errors, result.out, "an image could not be decoded or scored")
    print(format_totals(result.totals, job.labels))
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
    add_options(p, "diffalign.feedback.relabel_dataset:RelabelJob")
    p.set_defaults(func=cmd_relabel)

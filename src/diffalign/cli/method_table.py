"""`diffalign method-table`: the methods table (one row per method, training seeds pooled) of an evaluation."""

from __future__ import annotations

import argparse

from .options import add_options, job_values


def cmd_method_table(args: argparse.Namespace) -> int:
    from ..evaluation.method_table import MethodTableOptions, write_method_table

    options = MethodTableOptions(**job_values(args, MethodTableOptions))
    path = write_method_table(options.eval_dir, options.out, options.scorer, options.resamples)
    print(path.read_text(), end="")
    print(f"\nwritten to {path}")
    return 0


def add_method_table_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `method-table` subcommand."""
    p = sub.add_parser(
        "method-table",
        help="one row per training method from a `diffalign eval` of many runs (training seeds pooled)",
        description="Group the tuned models of an evaluation folder by method (models named METHOD-seedK, or\n"
        "METHOD alone) and write a Markdown table: per method, the mean reward gain, the win rate among\n"
        "decided pairs and the per-prompt win rate (a prompt's seeds averaged first), each pooled over the\n"
        "method's runs with a 95 % CI from a bootstrap over prompts; each run's win rate and gain (the\n"
        "spread over training seeds); and the training time per run (from each run's metrics.jsonl).",
        epilog="example:\n  diffalign eval dpo-seed0=runs/b/dpo-seed0 dpo-seed1=runs/b/dpo-seed1 mapo-seed0=runs/b/mapo-seed0 "
        "--out runs/b/eval\n  diffalign method-table runs/b/eval            # writes runs/b/eval/methods.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(p, "diffalign.evaluation.method_table:MethodTableOptions")
    p.set_defaults(func=cmd_method_table)

"""`diffalign fuse`: merge a trained LoRA into its base model as a standalone pipeline folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..models.fuse_options import FuseOptions
from .options import add_options, job_values


def cmd_fuse(args: argparse.Namespace) -> int:
    """Fuse the LoRA of a run into its base (from the run's config unless --base) and save the pipeline."""
    from ..models.fuse import fuse_lora
    from .runs import base_model_of

    options = FuseOptions(**job_values(args, FuseOptions))
    run = Path(options.run)
    base = base_model_of(run, options.base)
    out = fuse_lora(base, run, options.out, scale=options.scale, dtype=options.dtype)
    print(f"fused {run} into {base}: {out} (loads with DiffusionPipeline.from_pretrained, or as model.pretrained)")
    return 0


def add_fuse_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `fuse` subcommand."""
    p = sub.add_parser(
        "fuse",
        help="merge a trained LoRA into its base model (a new pipeline folder)",
        description="Merge the LoRA of a `diffalign train` run (or a LoRA folder) into its base model with "
        "diffusers' fuse_lora and save the result as a standalone diffusers pipeline folder: the tuned model "
        "as a plain model, e.g. the base of the next on-policy round.",
        epilog="example:\n  diffalign fuse runs/demo-dpo --out runs/demo-dpo-fused",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(p, FuseOptions)
    p.set_defaults(func=cmd_fuse)

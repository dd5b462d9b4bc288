"""`diffalign fuse`: merge a trained LoRA into its base model as a standalone pipeline folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_fuse(args: argparse.Namespace) -> int:
    """Fuse the LoRA of a run into its base (from the run's config unless --base) and save the pipeline."""
    from ..models.fuse import fuse_lora
    from .runs import base_model_of

    run = Path(args.run)
    base = base_model_of(run, args.base)
    out = fuse_lora(base, run, args.out, scale=args.scale, dtype=args.dtype)
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
    p.add_argument("run", help="output_dir of a LoRA training run, or a folder with pytorch_lora_weights.safetensors")
    p.add_argument("--out", required=True, help="folder for the fused pipeline (written atomically)")
    p.add_argument("--base", default=None, help="base model (default: model.pretrained of the run's config.yaml)")
    p.add_argument("--scale", type=float, default=1.0, help="LoRA scale to fuse with (default 1.0)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="saved precision")
    p.set_defaults(func=cmd_fuse)

"""`diffalign export`: a trained LoRA in kohya's layout (AUTOMATIC1111, ComfyUI) or a diffusers copy."""

from __future__ import annotations

import argparse

from ..models.lora_export import ExportOptions
from .options import add_options, job_values


def cmd_export(args: argparse.Namespace) -> int:
    """Export the LoRA of a run, checkpoint or LoRA folder and say where it went and with which alpha."""
    from ..models.lora_export import export_lora

    options = ExportOptions(**job_values(args, ExportOptions))
    out, source = export_lora(options.run, options.format, options.out)
    print(f"exported {source.file} ({options.format}, rank {source.rank}, alpha {source.alpha:g} from "
          f"{source.alpha_from}): {out}")
    return 0


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `export` subcommand."""
    p = sub.add_parser(
        "export",
        help="export a trained LoRA for AUTOMATIC1111, ComfyUI and kohya loaders (or as a diffusers copy)",
        description="Write the LoRA of a `diffalign train` run, one of its checkpoints or a LoRA folder as one "
        ".safetensors file. kohya: the layout AUTOMATIC1111, ComfyUI and kohya-format loaders read (lora_unet_... "
        "keys with each layer's .alpha; the base model and rank in the file's metadata); diffusers loads it too. "
        "diffusers: a copy in diffusers' layout that records the alpha. The alpha is the run's lora.alpha.",
        epilog="examples:\n  diffalign export runs/sdxl-dpo --format kohya      # runs/sdxl-dpo/sdxl-dpo-kohya.safetensors\n"
        "  diffalign export runs/sdxl-dpo/checkpoints/step-00001000 --out loras/dpo-1000.safetensors",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(p, ExportOptions)
    p.set_defaults(func=cmd_export)

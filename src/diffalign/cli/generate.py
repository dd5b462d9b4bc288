"""`diffalign generate`: images for a prompt set and seeds from a model with LoRAs, into a resumable folder."""

from __future__ import annotations

import argparse
import sys

from ..api import SAMPLER_NAMES, parse_seeds, sampling_inputs  # noqa: F401 (parse_seeds: tests import it here)
from ..evaluation.model_specs import parse_lora, resolve_model

PROMPT_SETS_HELP = (
    "a named set (parti, pickapic-test, pickapic-validation, hpdv2, demo; NAME:CATEGORY keeps one category, "
    "e.g. hpdv2:anime) or a prompt file (.txt one per line, .csv/.tsv/.jsonl/.json/.parquet with a prompt column "
    "and optionally a category column)"
)


def add_sampling_args(p: argparse.ArgumentParser, seeds: str) -> None:
    """The options shared by `generate` and `eval`: prompts, seeds and how images are drawn."""
    p.add_argument("--prompts", default="demo", metavar="SET|FILE", help=f"prompts: {PROMPT_SETS_HELP} (default: demo, "
                   "the embedded demo's held-out captions)")
    p.add_argument("--max-prompts", type=int, default=None, metavar="N", help="only the first N prompts of the set")
    p.add_argument("--seeds", default=seeds, metavar="N|A-B|a,b", help=f"seeds per prompt (default: {seeds}, i.e. "
                   "0..N-1); the same (prompt, seed) starts every model from the same noise")
    p.add_argument("--sampler", default="ddim", help=f"scheduler: {SAMPLER_NAMES} (default: ddim)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default: 20)")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default: 5)")
    p.add_argument("--size", type=int, default=None, help="image height and width (default: the model's native size)")
    p.add_argument("--negative-prompt", default="", help="negative prompt for every image (default: none)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="model precision (auto: float16 on CUDA, float32 on the CPU)")
    p.add_argument("--batch-size", type=int, default=16, help="images per pipeline call, and per scorer call in "
                   "eval (default: 16)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available; under a "
                   "distributed launcher each process takes its own GPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def sampling_from_args(args: argparse.Namespace):
    """(prompt set, seeds, sampling settings) from the shared options."""
    return sampling_inputs(args.prompts, args.seeds, args.max_prompts, args.sampler, args.steps, args.guidance,
                           args.size, args.negative_prompt, args.dtype)


def cmd_generate(args: argparse.Namespace) -> int:
    from ..evaluation.generation import generate_folder
    from ..files import check_output_folder
    from ..processes import current_processes

    check_output_folder(args.out, "--out")
    model = resolve_model(args.model, base=args.base, loras=[parse_lora(t) for t in args.lora])
    prompts, seeds, sampling = sampling_from_args(args)
    processes = current_processes()
    try:
        result = generate_folder(model, prompts, seeds, args.out, sampling, args.batch_size, args.device,
                                 progress=not args.no_progress, processes=processes)
    except KeyboardInterrupt:
        print(f"interrupted: the images written are kept in {args.out}; rerun the same command to resume",
              file=sys.stderr)
        return 130
    if not processes.is_main:
        return 0
    print(f"{result.total} images in {result.folder} ({result.written} drawn now, {result.skipped} already there); "
          f"metadata in {result.folder / 'metadata.jsonl'}")
    return 0


def add_generate_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `generate` subcommand."""
    p = sub.add_parser(
        "generate",
        help="generate images for a prompt set and seeds (resumable)",
        description="Draw every prompt of a prompt set with every seed, from a model with zero or more LoRAs, into\n"
        "a folder: p{prompt:05d}-s{seed}.png images and one metadata.jsonl line per image recording its prompt,\n"
        "seed and every setting (Hugging Face imagefolder layout: `diffalign score FOLDER` and `diffalign grid`\n"
        "read it). Images already in the folder are skipped, so an interrupted run resumes; a rerun with other\n"
        "settings, or with other weights at the same path (a run trained further), is refused. Image\n"
        "(prompt, seed) starts from the noise of `seed`, whatever the batch or device.\n\n"
        "Runs unchanged on many GPUs: `accelerate launch --num_processes N -m diffalign.cli.main generate ...`\n"
        "(one GPU per process; --out on a filesystem every process sees). Each process draws its share of the\n"
        "--batch-size batches; the main process writes metadata.jsonl in image order, so the folder is the one a\n"
        "single process writes. A stopped job resumes with the same command, on any number of processes.",
        epilog="examples:\n"
        "  diffalign generate assets/tiny-sd --prompts demo --seeds 2 --out samples/base\n"
        "  diffalign generate out/demo --out samples/tuned            # a training run: its base + its LoRA\n"
        "  diffalign generate runwayml/stable-diffusion-v1-5 --lora out/sd15-dpo@0.8 --prompts parti \\\n"
        "      --seeds 0-3 --sampler dpm++ --steps 25 --guidance 7.5 --out samples/parti-dpo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="hub id, pipeline folder, or a `diffalign train` run / LoRA folder (then on its base)")
    p.add_argument("--base", default=None, help="base model of a LoRA folder without a run config")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[@SCALE]",
                   help="LoRA folder or run added at SCALE (default 1; repeatable)")
    p.add_argument("--out", required=True, help="output folder (created; reused to resume)")
    add_sampling_args(p, seeds="1")
    p.set_defaults(func=cmd_generate)

"""`diffalign generate`: images for a prompt set and seeds from a model with LoRAs, into a resumable folder."""

from __future__ import annotations

import argparse
import sys

from ..api import parse_seeds, sampling_inputs  # noqa: F401 (parse_seeds: tests import it here)
from .options import add_options, job_values, when_used


def add_job_options(parser: argparse.ArgumentParser, job: type) -> None:
    """The options of a job that extends `SamplingOptions`: its own first, then the sampling options."""
    import dataclasses

    from ..evaluation.generation import SamplingOptions

    sampling = {field.name for field in dataclasses.fields(SamplingOptions)}
    add_options(parser, job, skip=sampling)
    add_options(parser, job, skip=[field.name for field in dataclasses.fields(job) if field.name not in sampling])


def cmd_generate(args: argparse.Namespace) -> int:
    from ..evaluation.generation import GenerateOptions, generate_folder
    from ..evaluation.model_specs import parse_lora, resolve_model
    from ..files import check_output_folder
    from ..processes import current_processes

    options = GenerateOptions(**job_values(args, GenerateOptions))
    check_output_folder(options.out, "--out")
    model = resolve_model(options.model, base=options.base, loras=[parse_lora(t) for t in options.lora])
    prompts, seeds, sampling = sampling_inputs(options)
    processes = current_processes()
    try:
        result = generate_folder(model, prompts, seeds, options.out, sampling, options.batch_size, options.device,
                                 progress=options.progress, processes=processes)
    except KeyboardInterrupt:
        print(f"interrupted: the images written are kept in {options.out}; rerun the same command to resume",
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
    def options() -> None:
        from ..evaluation.generation import GenerateOptions

        add_job_options(p, GenerateOptions)

    when_used(p, options)
    p.set_defaults(func=cmd_generate)

"""`diffalign captions`: write a caption per image of each pair (DCPO's captioning, perturbation or hybrid)."""

from __future__ import annotations

import argparse
from ..feedback.caption_job import CaptionJob
from .options import add_options, job_values
from .pairs import command_line, report_interrupted, report_left_out


def cmd_captions(args: argparse.Namespace) -> int:
    from ..feedback.caption_dataset import caption_dataset

    job = CaptionJob(**job_values(args, CaptionJob), command=command_line())
    try:
        result = caption_dataset(job)
    except KeyboardInterrupt:
        return report_interrupted(args.out)
    if result is None:  # another process of a launch: the main process merges and reports
        return 0
    report_left_out(args.source, result.errors, result.out, "an image could not be decoded or captioned")
    print(f"{result.rows} pairs written with caption_0/caption_1 ({job.strategy}) in {len(result.shards)} shard(s) "
          f"and a dataset card in {result.out}\ntrain DCPO on them: diffalign train CONFIG objective.name=dcpo "
          f"data.path={result.out}")
    return 1 if result.errors else 0


def add_captions_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `captions` subcommand."""
    p = sub.add_parser(
        "captions",
        help="write a caption per image of each pair (DCPO's Pick-Double-Caption schema)",
        description="Give every pair of a Pick-a-Pic-schema table a caption per image, caption_0 for jpg_0 and\n"
        "caption_1 for jpg_1, as DCPO trains on them (the winner conditioned on its caption, the loser on its\n"
        "own), and write a new dataset (parquet shards in OUT/data/, a dataset card OUT/README.md) with every\n"
        "original column.\n\n"
        "  --strategy captioning    each image's caption says what it shows (--captioner)\n"
        "  --strategy perturbation  the winner keeps the prompt, the loser gets it perturbed (--perturber)\n"
        "  --strategy hybrid        the winner captioned, the loser its caption perturbed (both)\n\n"
        "--captioner: any transformers image-to-text model (hub id or folder; BLIP, GIT, LLaVA...), fp16 on a\n"
        "GPU; chat models are asked --instruction about each image. --perturber: any transformers\n"
        "text-to-text (DIPPER, T5) or causal model, prompted with --template at --diversity. For the embedded\n"
        "shapes world, 'shapes' names a rule-based captioner (what each image shows) and perturber.\n\n"
        "Perturbation and hybrid depend on the winner: relabel first, then caption. Rows whose images\n"
        "cannot be decoded or captioned are left out and listed (exit status 1). Resumable: shards are\n"
        "written one by one; rerunning the same command continues.\n\n"
        "Runs unchanged on many processes (GPUs, nodes):\n"
        "  accelerate launch --num_processes N -m diffalign.cli.main captions SOURCE --out OUT ...\n"
        "process r captions shards r, r+N, ... on its own GPU (--device cuda or none); the main process merges\n"
        "them into what one process writes (a shard's captions depend only on its rows and --seed). A killed\n"
        "launch resumes with the same command, on any N.",
        epilog="examples:\n"
        "  diffalign captions assets/demo/pairs_train.parquet --captioner shapes --out runs/demo-captions\n"
        "  diffalign captions yuvalkirstain/pickapic_v2 --captioner llava-hf/llava-v1.6-34b-hf --device cuda \\\n"
        "      --batch-size 16 --out /data/pickapic-captioned\n"
        "  diffalign captions /data/pickapic-ai --strategy hybrid --captioner Salesforce/blip-image-captioning-large \\\n"
        "      --perturber kalpeshk2011/dipper-paraphraser-xxl --diversity strong --out /data/pickapic-hybrid\n"
        "exit status: 0 every row written; 1 some rows left out (listed); 2 usage error; 130 interrupted.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(p, CaptionJob)
    p.set_defaults(func=cmd_captions)

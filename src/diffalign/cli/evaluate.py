"""`diffalign eval`: tuned models against their base on one prompt set; results, plots and an HTML report."""

from __future__ import annotations

import argparse
import json
import sys

from ..api import eval_job
from .generate import add_job_options
from .options import job_values, when_used


def cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluation.evaluate import EvalCommandOptions, run_eval
    from ..evaluation.report import render_markdown
    from ..processes import current_processes

    options = EvalCommandOptions(**job_values(args, EvalCommandOptions))
    job = eval_job(options)
    out = job.out
    earlier = (out / "results.json").is_file()
    try:
        results = run_eval(job, current_processes())
    except KeyboardInterrupt:
        print(f"interrupted: the images drawn are kept in {out / 'images'}; rerun the same command to resume",
              file=sys.stderr)
        return 130
    if results is None:  # not the main process: it reports
        return 0
    print(render_markdown(results))
    print(f"\nreport: {out / 'report.html'}   results: {out / 'results.json'}   scores: {out / 'scores.csv'}")
    if earlier:
        print(f"(replaced the results of an earlier eval in {out}; images of the same models and settings were reused)")
    if options.json:
        print(json.dumps(results, indent=2))
    return 0


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `eval` subcommand."""
    p = sub.add_parser(
        "eval",
        help="compare tuned models with their base: scores, win rates with CIs, grids and an HTML report",
        description="Generate every prompt x seed with the base model and each tuned model from the same initial\n"
        "noise, score every image with each scorer, and report per scorer: each model's mean and median (95 %\n"
        "bootstrap CI over prompts), each tuned model's win / tie / loss rates against the base with bootstrap\n"
        "95 % CIs (prompts resampled, so a prompt's seeds move together), and the same per category when the\n"
        "prompt set has categories. Writes OUT/results.json, scores.csv, summary.md, plots/, grids/ and\n"
        "report.html (one file that opens from disk; images by relative path). Images are kept in\n"
        "OUT/images/<model>/: a rerun resumes generation and rescores, replacing the earlier results; a model\n"
        "whose settings or weights (a run trained further) changed since its images were drawn is refused.\n\n"
        "Runs unchanged on many GPUs: `accelerate launch --num_processes N -m diffalign.cli.main eval ...` (one\n"
        "GPU per process; --out on a filesystem every process sees). Each process draws its share of every\n"
        "model's --batch-size batches, then scores its share of the images; the main process merges them and\n"
        "writes the results, which are those of one process. A stopped eval resumes with the same command.",
        epilog="examples:\n"
        "  diffalign eval out/demo                       # the embedded demo: tuned LoRA vs tiny base, shapes scorer\n"
        "  diffalign eval out/sd15-dpo --prompts parti --seeds 1 --scorer pickscore,hpsv2.1 --out eval/parti\n"
        "  diffalign eval round1=out/round-1 round2=out/model-2 --base assets/tiny-sd --out eval/rounds\n"
        "A tuned model is a training run or LoRA folder (on the base; PATH@SCALE sets the LoRA scale), a full "
        "fine-tuning run, or a pipeline folder (e.g. from `diffalign fuse`). The base defaults to the first run's "
        "model.pretrained (or a fused folder's base).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    def options() -> None:
        from ..evaluation.evaluate import EvalCommandOptions

        add_job_options(p, EvalCommandOptions)

    when_used(p, options)
    p.set_defaults(func=cmd_eval)

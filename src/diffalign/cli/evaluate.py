"""`diffalign eval`: tuned models against their base on one prompt set; results, plots and an HTML report."""

from __future__ import annotations

import argparse
import json
import sys

from ..api import eval_job
from .generate import add_sampling_args


def cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluation.evaluate import run_eval
    from ..evaluation.report import render_markdown
    from ..evaluation.scoring import split_scorer_names
    from ..processes import current_processes

    job = eval_job(
        args.tuned, args.base, prompts=args.prompts, seeds=args.seeds, scorers=split_scorer_names(args.scorer),
        out=args.out, scorer_options=args.scorer_option, max_prompts=args.max_prompts, sampler=args.sampler,
        steps=args.steps, guidance=args.guidance, size=args.size, negative_prompt=args.negative_prompt,
        dtype=args.dtype, batch_size=args.batch_size, device=args.device, tie_tolerance=args.tie_tolerance,
        resamples=args.resamples, grid_prompts=args.grid_prompts, grid_seeds=args.grid_seeds,
        progress=not args.no_progress,
    )
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
    if args.json:
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
    p.add_argument("tuned", nargs="+", metavar="[NAME=]TUNED[@SCALE]", help="tuned model(s) to compare with the base")
    p.add_argument("--base", default=None, help="base model (default: model.pretrained of the first run's config.yaml)")
    p.add_argument("--scorer", action="append", default=[], metavar="NAME[,NAME...]",
                   help="scorer(s) (repeat or separate with commas; default: shapes, the demo's reward); "
                   "see `diffalign score --help` for the list")
    p.add_argument("--scorer-option", action="append", default=[], metavar="NAME.KEY=VALUE",
                   help="constructor option of one scorer, e.g. pickscore.model=/path (repeatable)")
    p.add_argument("--tie-tolerance", type=float, default=0.0,
                   help="score differences up to this count as ties (default: exact equality)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default: 2000)")
    p.add_argument("--grid-prompts", type=int, default=8, help="prompts shown in the report's grids (default: 8)")
    p.add_argument("--grid-seeds", type=int, default=2, help="seeds per prompt shown in the grids (default: 2)")
    p.add_argument("--out", default=None, help="output folder (default: TUNED/eval for a run, else ./eval)")
    p.add_argument("--json", action="store_true", help="also print results.json")
    add_sampling_args(p, seeds="3")
    p.set_defaults(func=cmd_eval)

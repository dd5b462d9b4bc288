"""`diffalign score`: score images with scorers (registered, your own file.py:NAME, or remote:URL), or measure their agreement with human labels."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..files import check_output_file
from ..evaluation.score_options import ScoreOptions
from .options import add_options, job_values

if TYPE_CHECKING:
    from ..data.image_inputs import ImageItem
    from ..evaluation.score_job import ScoreJob
    from ..evaluation.scoring import ScoreRun

MAX_LISTED_ERRORS = 20


def _report_errors(run: ScoreRun, out: str | None) -> None:
    """List the images that could not be scored on stderr (all of them unless a file holds them)."""
    failed = run.failed
    if not failed:
        return
    shown = failed if out is None else failed[:MAX_LISTED_ERRORS]
    print(f"{len(failed)} image(s) could not be scored:", file=sys.stderr)
    for i in shown:
        print(f"  {run.items[i].where}: {run.error_of(i)}", file=sys.stderr)
    if len(shown) < len(failed):
        print(f"  ... and {len(failed) - len(shown)} more: see the error column of {out}", file=sys.stderr)


def _exit_code(run: ScoreRun) -> int:
    """0 when every image was scored, 1 when some failed, 130 when interrupted (as `score --help` says)."""
    if run.interrupted:
        print("interrupted: the images not scored are marked as such", file=sys.stderr)
        return 130
    return 1 if run.failed else 0


def cmd_score(args: argparse.Namespace) -> int:
    opts = ScoreOptions(**job_values(args, ScoreOptions))
    if not any(name.strip() for value in opts.scorers for name in value.split(",")):
        from ..rewards import available_scorers  # the registry alone: the scoring modules load much more

        raise ValueError(
            f"choose the scorer(s) with --scorer NAME[,NAME...]; available: {', '.join(available_scorers())} "
            "(`shapes` is the rule-based reward of the embedded demo world, for its 32x32 shape images)"
        )
    from ..evaluation.scoring import scorer_choice

    names, options, _ = scorer_choice(opts.scorers, opts.scorer_options)
    if opts.tie_tolerance is not None and opts.tie_tolerance < 0:
        raise ValueError(f"--tie-tolerance must be >= 0, got {opts.tie_tolerance}")
    if opts.pairs is not None:
        return _score_pairs(opts, names, options)
    for flag, value in (("--tie-aware", opts.tie_aware), ("--tie-tolerance", opts.tie_tolerance)):
        if value is not None:
            raise ValueError(f"{flag} applies to --pairs DATASET only")
    return _score_images(opts, names, options)


def _score_images(opts: ScoreOptions, names: list[str], options: dict[str, dict[str, object]]) -> int:
    from ..data.image_inputs import check_prompts, collect_items
    from ..evaluation.score_files import output_format, write_scores
    from ..evaluation.scoring import format_summary, format_table, summarize

    if not opts.inputs:
        raise ValueError("give the images to score: image files, folders or metadata files (or --pairs DATASET)")
    if opts.out:
        output_format(opts.out)
        check_output_file(opts.out)
    items = collect_items(opts.inputs, opts.prompt, exclude=[Path(opts.out)] if opts.out else [])
    check_prompts(items)
    job, run = _score_job(opts, names, options, items)
    if run is None:
        return 0  # another process: the main process writes and prints the merged scores
    summaries = summarize(run)
    columns, rows = run.rows()
    if opts.out:
        write_scores(opts.out, columns, rows, {s.scorer: s.as_dict() for s in summaries})
    else:
        table = [
            (item.where, *("-" if row[name] is None else f"{row[name]:.4f}" for name in run.scorer_names))
            for item, row in zip(run.items, rows)
        ]
        print(format_table(("file", *run.scorer_names), table, left=(0,)) + "\n")
    _report_errors(run, opts.out)
    print(format_summary(summaries))
    if opts.out:
        print(f"scores of {len(items)} image(s) in {opts.out}")
    return _finish(job, run)


def _score_job(
    opts: ScoreOptions, names: list[str], options: dict[str, dict[str, object]], items: list[ImageItem]
) -> tuple[ScoreJob, ScoreRun | None]:
    """`diffalign.api.score_job` with the command's options: the merged run on the main process, None on the
    others."""
    from ..api import score_job

    return score_job(items, names, options, opts.device, opts.dtype, opts.batch_size, opts.out, progress=opts.progress)


def _finish(job: ScoreJob, run: ScoreRun) -> int:
    """Remove the chunk records of a finished job (an interrupted one keeps them) and give the exit status."""
    code = _exit_code(run)
    if not run.interrupted:
        job.close()
    elif job.parts is not None and job.parts.is_dir():
        print(f"the scored batches are kept in {job.parts}: rerun the same command to score the rest", file=sys.stderr)
    return code


def _score_pairs(opts: ScoreOptions, names: list[str], options: dict[str, dict[str, object]]) -> int:
    from ..evaluation.agreement import format_agreement, pair_items, pairs_report, parse_thresholds
    from ..evaluation.score_files import output_format, write_atomically

    if opts.inputs or opts.prompt is not None:
        raise ValueError("--pairs DATASET scores each row's jpg_0/jpg_1 against its caption: give no other inputs or --prompt")
    if opts.out:
        output_format(opts.out, (".json",))
        check_output_file(opts.out)
    thresholds = parse_thresholds(opts.tie_aware) if opts.tie_aware is not None else []
    labels, items = pair_items(opts.pairs, tie_aware=bool(thresholds))
    job, run = _score_job(opts, names, options, items)
    if run is None:
        return 0  # another process: the main process writes and prints the report
    report = pairs_report(opts.pairs, labels, run, opts.tie_tolerance or 0.0, thresholds)
    if opts.out:
        write_atomically(opts.out, (json.dumps(report, indent=2) + "\n").encode())
    _report_errors(run, opts.out)
    print(format_agreement(report))
    if opts.out:
        print(f"report in {opts.out}")
    return _finish(job, run)


def add_score_parser(sub: argparse._SubParsersAction, scorer_names: str) -> None:
    """Add the `score` subcommand; `scorer_names` is the list shown in its help."""
    p = sub.add_parser(
        "score",
        help="score images with scorers (registered, file.py:NAME, remote:URL), or measure their agreement with human labels",
        description="Score images against their prompts with one or several scorers (registered, path/to/file.py:NAME,\n"
                    "package.module:NAME or remote:http://HOST:PORT) and print each\n"
        "scorer's n, mean, std, median, min and max, always with its scale (units are never mixed).\n\n"
        "INPUT is any of:\n"
        "  an image file      prompt from --prompt, or from a sidecar NAME.txt beside it\n"
        "  a folder           searched recursively; prompts from a metadata.jsonl / metadata.csv with\n"
        "                     file_name and prompt (or caption, text) columns (Hugging Face imagefolder\n"
        "                     style), else from sidecar .txt files\n"
        "  a metadata file    .jsonl / .csv / .parquet with file_name (relative to it) and a prompt column\n"
        "  a pair table       Pick-a-Pic-schema parquet file or folder of shards: each row's jpg_0 and\n"
        "                     jpg_1 are scored against its caption\n"
        "--prompt TEXT overrides all of these (--prompt \"\" for prompt-free scorers such as aesthetic).\n"
        "Unreadable, missing or non-image files are listed with the reason on stderr and in the error\n"
        "column of --out; the other images are still scored.\n\n"
        "With --pairs DATASET instead: each scorer's agreement with the human labels of a Pick-a-Pic-schema\n"
        "dataset (a pair agrees when the higher-scored image is the labelled winner; human ties are excluded\n"
        "and counted, equal scores counted apart), with a 95 % Wilson interval.",
        epilog="examples:\n"
        "  diffalign score samples/ --scorer pickscore,hpsv2.1 --out scores.csv\n"
        "  diffalign score a.png b.png --prompt \"a red circle on a blue background\" --scorer shapes\n"
        "  diffalign score photos/ --prompt \"\" --scorer aesthetic            # prompt-free scorer\n"
        "  diffalign score samples/ --scorer pickscore --scorer-option pickscore.model=/models/PickScore_v1\n"
        "  diffalign score --pairs /data/pickapic/test_unique --scorer pickscore --tie-aware sweep --out acc.json\n"
        f"scorers: {scorer_names}\n"
        "All chosen scorers are loaded together; each batch of images is decoded once and scored by each.\n"
        "On several processes (GPUs, nodes), each scoring its share of the batches:\n"
        "  accelerate launch --num_processes N -m diffalign.cli.main score samples/ --scorer pickscore --out s.csv\n"
        "With --out (required on several processes) the scored batches wait in the hidden .s.csv.parts/ beside\n"
        "it until the main process merges them (the file one process writes): a killed or interrupted job resumes\n"
        "with the same command, on any number of processes; one with other images, scorers or options is refused.\n"
        "exit status: 0 every image scored; 1 some images could not be scored (listed, the rest scored and\n"
        "written); 2 usage error, or a scorer that failed on every image of the first batch (nothing\n"
        "written); 130 interrupted (what was scored is written).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(p, ScoreOptions)
    p.set_defaults(func=cmd_score)

#!/usr/bin/env python
"""Time `diffalign generate` and `diffalign score` on one process against N processes (`accelerate launch`), and
check that both write the same files.

    python scripts/benchmark_processes.py              # CPU: 2 processes x 1 thread against 1 process x 2 threads
    python scripts/benchmark_processes.py --device cuda --processes 8 --model /models/sd15 --size 512 \\
        --steps 20 --images 256 --scorer-size vit-h-14     # GPUs: 1 process (1 GPU) against 8 (8 GPUs)

Each command runs as a user runs it, a fresh process (or launch) each time, so the wall time includes the
start-up every process pays (imports, loading the model or scorer): that is what a user waits for. On the CPU the
threads are split between the processes (OMP_NUM_THREADS); on GPUs each process takes its own GPU. Runs alternate
between the layouts (--repeats times) and the median wall time of each is compared; the ratio printed is the
N-process images/s over the 1-process images/s (above 1: the processes are faster). PickScore runs on a
random-weight replica of --scorer-size (no weights offline), built once in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _launch(processes: int, threads: int | None) -> tuple[list[str], dict]:
    """The command prefix that runs `diffalign` on `processes` processes, and its environment."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    if processes == 1:
        return [sys.executable, "-m", "diffalign.cli.main"], env
    port = 29000 + os.getpid() % 1000
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes), "--num_machines",
              "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]
    # --multi_gpu is torchrun, which starts every process, with or without GPUs (accelerate's --cpu launcher
    # starts one process unless MPI is installed); on the CPU the processes meet over gloo
    launch.append("--multi_gpu")
    return [*launch, "-m", "diffalign.cli.main"], env


def _timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")
    return seconds


def many_threads(layouts: list[tuple[int, int | None]]) -> bool:
    """Whether the layouts run with different thread counts per process."""
    return len({threads for _, threads in layouts}) > 1


def _same_files(a: Path, b: Path) -> bool:
    """Whether two outputs (folders or files) hold byte-identical files, ignoring hidden bookkeeping."""
    if a.is_file():
        return a.read_bytes() == b.read_bytes()
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(a).parts))
    other = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(b).parts))
    return names == other and all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--processes", type=int, default=2, help="processes of the many-process layout (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads in all, split between the processes")
    parser.add_argument("--model", default=str(ROOT / "assets" / "tiny-sd"))
    parser.add_argument("--images", type=int, default=48, help="images to draw (prompts of the demo set x 2 seeds)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--score-copies", type=int, default=8, help="score the drawn images this many times over")
    parser.add_argument("--scorer-size", default="tiny", help="PickScore replica: tiny, vit-l-14 or vit-h-14")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    cpu = args.device == "cpu"
    layouts = [(1, args.threads if cpu else None), (args.processes, max(1, args.threads // args.processes) if cpu else None)]
    if args.processes == 1:  # one GPU: the one-process figures only, nothing to compare
        layouts = layouts[:1]
    work = Path(tempfile.mkdtemp(prefix="bench-processes-"))
    from diffalign.rewards.replicas import save_clip_replica

    scorer = save_clip_replica(work / "pickscore", size=args.scorer_size)
    prompts = work / "prompts.txt"
    lines = [line for line in (ROOT / "assets/demo/prompts_heldout.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    prompts.write_text("\n".join((lines * (args.images // 2 // len(lines) + 1))[: args.images // 2]) + "\n")
    common = ["--device", args.device, "--no-progress"]
    generate = ["generate", args.model, "--prompts", str(prompts), "--seeds", "2", "--steps", str(args.steps),
                "--batch-size", str(args.batch_size), *(["--size", str(args.size)] if args.size else []), *common]
    images = args.images // 2 * 2

    figures: dict = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "device": args.device,
                     "cpu_cores": os.cpu_count(), "model": args.model, "steps": args.steps, "images": images,
                     "layouts": [f"{p} process(es) x {t} thread(s)" if t else f"{p} process(es)" for p, t in layouts]}
    outputs: dict[int, list[Path]] = {}
    times: dict[str, dict[int, list[float]]] = {"generate": {}, "score": {}}
    for repeat in range(args.repeats):
        for p, t in layouts if repeat % 2 == 0 else layouts[::-1]:
            prefix, env = _launch(p, t)
            out = work / f"gen-{p}-{repeat}"
            times["generate"].setdefault(p, []).append(_timed([*prefix, *generate, "--out", str(out)], env))
            outputs.setdefault(p, []).append(out)
            print(f"generate, {p} process(es), run {repeat + 1}: {times['generate'][p][-1]:.1f} s", flush=True)
    if cpu and many_threads(layouts):
        # the thread count changes how float sums are split, hence some pixels: the files of N processes x T
        # threads are compared with one process of T threads, drawn once more (untimed)
        prefix, env = _launch(1, layouts[-1][1])
        reference = work / "gen-reference"
        _timed([*prefix, *generate, "--out", str(reference)], env)
        outputs[0] = [reference]
    source = outputs[1][0]
    inputs = [str(source)] * args.score_copies
    scored = images * args.score_copies
    for repeat in range(args.repeats):
        for p, t in layouts if repeat % 2 == 0 else layouts[::-1]:
            prefix, env = _launch(p, t)
            out = work / f"scores-{p}-{repeat}.csv"
            command = [*prefix, "score", *inputs, "--scorer", "pickscore", "--scorer-option",
                       f"pickscore.model={scorer}", "--scorer-option", f"pickscore.processor={scorer}", "--out", str(out),
                       *common]
            times["score"].setdefault(p, []).append(_timed(command, env))
            outputs.setdefault(-p, []).append(out)
            print(f"score, {p} process(es), run {repeat + 1}: {times['score'][p][-1]:.1f} s", flush=True)

    many = args.processes
    rows = []
    for command, count in (("generate", images), ("score", scored)):
        one = statistics.median(times[command][1])
        key = 1 if command == "generate" else -1
        runs = outputs[key] + (outputs[key * many] if many > 1 else [])
        if command == "generate" and 0 in outputs:  # one process with the N-process layout's threads
            runs = outputs[0] + (outputs[key * many] if many > 1 else [])
        same = all(_same_files(runs[0], other) for other in runs[1:])
        entry = {"items": count, "seconds_1": [round(s, 2) for s in times[command][1]],
                 "images_per_s_1": round(count / one, 3), "outputs_identical": same}
        row = [command, count, f"{count / one:.2f}"]
        if many > 1:
            n = statistics.median(times[command][many])
            entry.update({f"seconds_{many}": [round(s, 2) for s in times[command][many]],
                          f"images_per_s_{many}": round(count / n, 3), "ratio": round(one / n, 3)})
            row += [f"{count / n:.2f}", f"{one / n:.2f}"]
        figures[command] = entry
        rows.append((*row, "yes" if same else "NO"))
    header = ("command", "images", *(f"img/s {layout}" for layout in figures["layouts"]),
              *(("ratio",) if many > 1 else ()), "same files*")
    widths = [max(len(str(r[c])) for r in (header, *rows)) for c in range(len(header))]
    for row in (header, *rows):
        print("  ".join(str(v).rjust(w) if c else str(v).ljust(w) for c, (v, w) in enumerate(zip(row, widths))))
    print(f"(median of {args.repeats} runs each, alternating; wall time of the whole command, start-up included; "
          f"{figures['date']}, {figures['cpu_cores']} CPU cores)")
    print("* every run's files against the first's; generate's many-process runs against one process with as many "
          "threads per process (the thread count moves float sums, hence some pixels)")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()

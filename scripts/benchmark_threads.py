#!/usr/bin/env python
"""Time the demo's CPU work alone and beside a copy of itself, with PyTorch's default threads (the old default)
and with diffalign's (train.cpu_threads=auto, a short OpenMP spin), to see which collapses when jobs share cores.

    python scripts/benchmark_threads.py                        # 30 KTO demo steps; a cache of 512 pairs
    python scripts/benchmark_threads.py --settings old,new,spin,passive,one
    python scripts/benchmark_threads.py --workloads train --steps 150 --modes quiet,staggered --stagger 12

Each workload runs as `diffalign` processes: quiet (one process), together (two started at once) and staggered
(the second started --stagger seconds after the first, while the first trains: a job that arrives later). The
ratio of a pair's mean wall time to the quiet one is the number to compare: two jobs that each used every core
alone take about twice as long side by side when they share the cores fairly; far more is the collapse. Each
process reports the threads it ran with; a row prints as soon as its runs are done. Settings:
  old      PyTorch's default: one thread per core, libgomp's default spin (300000) before a waiting worker sleeps
  new      diffalign's default: auto threads (the usable cores other processes leave free), a spin of 10000
  auto     auto threads with libgomp's default spin
  spin     one thread per core with the spin of 10000: `new` on a machine it found free, if another job arrives
  passive  one thread per core, OMP_WAIT_POLICY=PASSIVE (waiting workers sleep at once)
  one      one thread per process
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import torch

from diffalign.threads import busy_cores_now, usable_cores

ROOT = Path(__file__).resolve().parents[1]
DEMO = "configs/demo/kto.yaml"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
SETTINGS = {
    "old": "PyTorch default threads, libgomp default spin",
    "new": "diffalign: auto threads, spin 10000",
    "auto": "auto threads, libgomp default spin",
    "spin": "PyTorch default threads, spin 10000",
    "passive": "PyTorch default threads, passive wait",
    "one": "1 thread",
}
# Runs the command's `diffalign` arguments as the console script does (torch not loaded before, so that the CLI
# can still set OpenMP's wait), then reports the threads and the OpenMP wait setting it ran with.
CHILD = """import os, sys
from diffalign.cli.main import main
code = main(sys.argv[1:])
import torch
from diffalign import threads
chosen = threads.threads_at_start() if threads.threads_at_start.cache_info().currsize else torch.get_num_threads()
wait = ",".join(f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ)
print(f"diffalign-threads {chosen} {wait or 'default'}")
sys.exit(code)
"""


def setting_env(setting: str, base: dict[str, str], torch_threads: int) -> dict[str, str]:
    """The environment of a `diffalign` process under `setting`: `base` without the thread variables, plus
    OMP_NUM_THREADS (which `auto` defers to) for fixed counts and OpenMP's wait setting where it is not the CLI's
    (GOMP_SPINCOUNT=300000 is libgomp's own default spin, which keeps the CLI from setting its own)."""
    env = {k: v for k, v in base.items() if k not in THREAD_VARIABLES}
    extra = {
        "old": {"OMP_NUM_THREADS": str(torch_threads), "GOMP_SPINCOUNT": "300000"},
        "new": {},
        "auto": {"GOMP_SPINCOUNT": "300000"},
        "spin": {"OMP_NUM_THREADS": str(torch_threads)},
        "passive": {"OMP_NUM_THREADS": str(torch_threads), "OMP_WAIT_POLICY": "PASSIVE"},
        "one": {"OMP_NUM_THREADS": "1"},
    }
    if setting not in extra:
        raise ValueError(f"--settings: unknown setting {setting!r}; choose from {', '.join(SETTINGS)}")
    return {**env, **extra[setting]}


def workload_args(workload: str, folder: Path, steps: int, pairs: int) -> list[str]:
    """The `diffalign` arguments of `workload` writing under `folder` (its own, so that no run finds another's)."""
    if workload == "train":
        return ["train", DEMO, f"train.max_steps={steps}", f"train.output_dir={folder / 'run'}",
                "train.checkpoint_every=0", "train.trackers=[]", f"train.log_every={steps}", "validation.every=0",
                "data.cache=off", f"data.cache_dir={folder / 'cache'}"]
    if workload == "cache":
        return ["cache", DEMO, f"data.cache_dir={folder / 'cache'}", f"data.max_pairs={pairs}"]
    raise ValueError(f"--workloads: unknown workload {workload!r}; choose from train, cache")


def command_for(args: list[str]) -> list[str]:
    """The process that runs `diffalign ARGS` and then prints `diffalign-threads N WAIT`."""
    return [sys.executable, "-c", CHILD, *args]


def timed(command: list[str], env: dict[str, str], log: Path, name: str) -> tuple[float, str]:
    """Run `command` (the run `name`) from the repository root and return its wall seconds and what it reported
    ("N WAIT": its threads and OpenMP wait setting); a failure stops the benchmark with the end of its output."""
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    lines = log.read_text().splitlines()
    if code:
        tail = "\n".join(lines[-15:])
        raise SystemExit(f"benchmark_threads: the {name} run failed (exit {code}):\n{tail}")
    reported = [line.split(maxsplit=1)[1] for line in lines if line.startswith("diffalign-threads ")]
    return seconds, reported[-1] if reported else "? ?"


def side_by_side(n: int, run: Callable[[int], tuple[float, str]], stagger: float = 0.0) -> list[tuple[float, str]]:
    """`run(i)` for i < n, the i-th started `i * stagger` seconds after the first; their results."""
    def delayed(i: int) -> tuple[float, str]:
        time.sleep(i * stagger)
        return run(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(delayed, range(n)))


MODES = {"quiet": 1, "together": 2, "staggered": 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="train,cache", help="comma-separated: train, cache")
    parser.add_argument("--settings", default="old,new", help=f"comma-separated: {', '.join(SETTINGS)}")
    parser.add_argument("--modes", default="quiet,together", help="comma-separated: quiet (first), together, staggered")
    parser.add_argument("--steps", type=int, default=30, help="training steps of the KTO demo")
    parser.add_argument("--pairs", type=int, default=512, help="pairs the cache encodes")
    parser.add_argument("--stagger", type=float, default=10.0, help="seconds between the staggered pair's starts")
    args = parser.parse_args()
    workloads, settings, modes = args.workloads.split(","), args.settings.split(","), args.modes.split(",")
    torch_threads = torch.get_num_threads()
    envs = {s: setting_env(s, dict(os.environ), torch_threads) for s in settings}
    for workload in workloads:
        workload_args(workload, Path(), args.steps, args.pairs)  # refuse a bad name before any run
    if modes[0] != "quiet" or not set(modes) <= set(MODES):
        raise SystemExit(f"--modes: quiet first, then any of together, staggered; not {args.modes}")

    load = os.getloadavg()
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, {usable_cores()} usable cores, "
          f"PyTorch default {torch_threads} threads, load average {load[0]:.2f} (1 min) {load[1]:.2f} (5 min); "
          f"train: {args.steps} KTO demo steps, cache: {args.pairs} pairs, staggered: {args.stagger:g} s apart")
    header = f"\n{'workload':8s} {'setting':45s} {'threads':>9s} {'busy':>5s} {'quiet s':>8s}"
    print(header + "".join(f" {mode + ' s':>11s} {'/quiet':>6s}" for mode in modes[1:]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for workload in workloads:
            for setting in settings:
                busy = busy_cores_now()
                results: dict[str, list[tuple[float, str]]] = {}
                for mode in modes:
                    folder = Path(tmp) / f"{workload}-{setting}-{mode}"

                    def run(i: int) -> tuple[float, str]:
                        (folder / str(i)).mkdir(parents=True)
                        command = command_for(workload_args(workload, folder / str(i), args.steps, args.pairs))
                        return timed(command, envs[setting], folder / f"{i}.log", f"{workload} {setting} {mode}")

                    results[mode] = side_by_side(MODES[mode], run, args.stagger if mode == "staggered" else 0.0)
                quiet = results["quiet"][0][0]
                threads = "/".join(",".join(t.split()[0] for _, t in results[mode]) for mode in modes)
                row = f"{workload:8s} {f'{setting}: {SETTINGS[setting]}':45s} {threads:>9s} {busy:5.2f} {quiet:8.1f}"
                for mode in modes[1:]:
                    seconds = statistics.mean(s for s, _ in results[mode])
                    row += f" {seconds:11.1f} {seconds / quiet:6.2f}"
                print(row, flush=True)
    print(f"(threads: each run's, by mode; busy: the cores other processes kept busy just before the quiet run; a "
          f"pair's seconds are the mean of its two; load average at the end {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()

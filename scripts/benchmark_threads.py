#!/usr/bin/env python
"""Time the demo's CPU work alone and beside a copy of itself, with PyTorch's default threads (the old default)
and with diffalign's (train.cpu_threads=auto, OpenMP workers that sleep while waiting), to see which collapses
when jobs share the cores.

    python scripts/benchmark_threads.py                        # 30 KTO demo steps; a cache of 512 pairs
    python scripts/benchmark_threads.py --workloads cache --pairs 64 --settings old,new,one

Each workload runs as `diffalign` processes, quiet (one process) and loaded (two started together; their mean
wall time), every quiet run before the loaded ones so that the load they leave does not count as another job's.
The loaded/quiet ratio is the number to compare: two jobs that each used every core quietly take about twice as
long side by side when they share the cores fairly; far more is the collapse. Settings:
  old  PyTorch's default: one thread per core, OpenMP's default waiting (spinning, then sleeping)
  new  diffalign's default: auto threads (the cores the machine's load leaves free) and passive waiting
  one  one thread per process
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

from diffalign.threads import auto_threads, machine_load, usable_cores

ROOT = Path(__file__).resolve().parents[1]
DEMO = "configs/demo/kto.yaml"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
SETTINGS = {
    "old": "PyTorch default threads, OpenMP default wait",
    "new": "auto threads, passive wait (diffalign)",
    "one": "1 thread",
}


def setting_env(setting: str, base: dict[str, str], torch_threads: int) -> dict[str, str]:
    """The environment of a `diffalign` process under `setting`: `base` without the thread variables, plus
    OMP_NUM_THREADS (which `auto` defers to) and, for `old`, libgomp's own default spin count (300000, what it
    spins with no OMP_WAIT_POLICY), which keeps the CLI from asking for passive waiting."""
    env = {k: v for k, v in base.items() if k not in THREAD_VARIABLES}
    if setting == "old":
        env.update(OMP_NUM_THREADS=str(torch_threads), GOMP_SPINCOUNT="300000")
    elif setting == "one":
        env.update(OMP_NUM_THREADS="1")
    elif setting != "new":
        raise ValueError(f"--settings: unknown setting {setting!r}; choose from {', '.join(SETTINGS)}")
    return env


def workload_command(workload: str, folder: Path, steps: int, pairs: int) -> list[str]:
    """The `diffalign` command of `workload` writing under `folder` (its own, so that no run finds another's)."""
    cli = [sys.executable, "-m", "diffalign.cli.main"]
    if workload == "train":
        return [*cli, "train", DEMO, f"train.max_steps={steps}", f"train.output_dir={folder / 'run'}",
                "train.checkpoint_every=0", "train.trackers=[]", f"train.log_every={steps}", "validation.every=0",
                "data.cache=off", f"data.cache_dir={folder / 'cache'}"]
    if workload == "cache":
        return [*cli, "cache", DEMO, f"data.cache_dir={folder / 'cache'}", f"data.max_pairs={pairs}"]
    raise ValueError(f"--workloads: unknown workload {workload!r}; choose from train, cache")


def timed(command: list[str], env: dict[str, str], log: Path, name: str) -> float:
    """Run `command` (the run `name`) from the repository root and return its wall seconds; a failure stops the
    benchmark with the end of its output."""
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    if code:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise SystemExit(f"benchmark_threads: the {name} run failed (exit {code}):\n{tail}")
    return seconds


def side_by_side(n: int, run: Callable[[int], float]) -> list[float]:
    """`run(i)` for i < n, all started together; their seconds."""
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="train,cache", help="comma-separated: train, cache")
    parser.add_argument("--settings", default="old,new", help=f"comma-separated: {', '.join(SETTINGS)}")
    parser.add_argument("--steps", type=int, default=30, help="training steps of the KTO demo")
    parser.add_argument("--pairs", type=int, default=512, help="pairs the cache encodes")
    args = parser.parse_args()
    workloads, settings = args.workloads.split(","), args.settings.split(",")
    torch_threads = torch.get_num_threads()
    envs = {s: setting_env(s, dict(os.environ), torch_threads) for s in settings}
    for workload in workloads:
        workload_command(workload, Path(), args.steps, args.pairs)  # refuse a bad name before any run

    load_before = os.getloadavg()
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, {usable_cores()} usable "
          f"cores, PyTorch default {torch_threads} threads, load average {load_before[0]:.2f} (1 min) "
          f"{load_before[1]:.2f} (5 min); train: {args.steps} KTO demo steps, cache: {args.pairs} pairs", flush=True)
    results: dict[tuple[str, str, str], list[float]] = {}
    chosen: dict[tuple[str, str, str], str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, copies in (("quiet", 1), ("loaded", 2)):
            for workload in workloads:
                for setting in settings:
                    key = (workload, setting, mode)
                    load = machine_load()
                    chosen[key] = str(auto_threads(usable_cores(), os.cpu_count() or 1, load)) \
                        if setting == "new" else envs[setting]["OMP_NUM_THREADS"]
                    folder = Path(tmp) / "-".join(key)

                    def run(i: int) -> float:
                        (folder / str(i)).mkdir(parents=True)
                        command = workload_command(workload, folder / str(i), args.steps, args.pairs)
                        return timed(command, envs[setting], folder / f"{i}.log", f"{workload} {setting} {mode}")

                    results[key] = side_by_side(copies, run)
                    print(f"  {workload} {setting} {mode}: {', '.join(f'{s:.1f} s' for s in results[key])} "
                          f"(threads {chosen[key]}, load {load:.2f} at start)", flush=True)

    print(f"\n{'workload':9s} {'setting':45s} {'threads':>9s} {'quiet s':>8s} {'loaded s':>9s} {'loaded/quiet':>13s}")
    for workload in workloads:
        for setting in settings:
            quiet = results[(workload, setting, "quiet")][0]
            loaded = statistics.mean(results[(workload, setting, "loaded")])
            threads = f"{chosen[(workload, setting, 'quiet')]}/{chosen[(workload, setting, 'loaded')]}"
            print(f"{workload:9s} {f'{setting}: {SETTINGS[setting]}':45s} {threads:>9s} {quiet:8.1f} {loaded:9.1f} "
                  f"{loaded / quiet:13.2f}")
    print(f"(threads: quiet/loaded; load average at the end {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()

"""How many CPU threads torch's operations use, chosen so that a job sharing its cores with others slows down
in proportion instead of collapsing.

Two things make a CPU job tens of times slower beside another one (docs/performance.md, "CPU threads"): more threads than
free cores, and OpenMP workers that spin for milliseconds while they wait for a descheduled peer, keeping that
peer off the core. `cpu_threads("auto")` runs a block on the usable cores that other processes leave free,
judged as the command starts; `command_started` begins that judgement and shortens OpenMP's spinning.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, NamedTuple

ThreadSetting = int | Literal["auto"]
AUTO: Literal["auto"] = "auto"
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
PROC_STAT = Path("/proc/stat")
USER_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# libgomp's spins before a waiting worker sleeps. Where two jobs' threads still outnumber the cores (one started
# on an idle machine, then another), its default (300000, milliseconds) made two demo trainings 3 to 150 times
# slower each, 10000 at most 6 times and as fast alone; passive waiting (0) kept them at their speed alone but made
# a demo step 1.66 times slower on an idle machine (docs/performance.md, CPU threads; scripts/benchmark_threads.py).
SPIN_COUNT = "10000"
SAMPLE_SECONDS = 0.2


class CpuSample(NamedTuple):
    """The machine's CPU time so far (busy and total, in /proc/stat's ticks), this process's CPU seconds, and
    when (monotonic seconds)."""

    busy: int
    total: int
    own: float
    at: float


def cpu_sample(stat: Path = PROC_STAT) -> CpuSample | None:
    """The machine's and this process's CPU time now; None where the system has no /proc/stat."""
    try:
        ticks = [int(x) for x in stat.read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + ticks[4]  # idle and iowait; user, nice, system, irq, softirq and steal are busy
    return CpuSample(sum(ticks) - idle, sum(ticks), time.process_time(), time.monotonic())


def others_busy_cores(start: CpuSample, end: CpuSample, cpus: int) -> float:
    """The cores other processes kept busy between two samples: the busy share of the machine's `cpus`, less
    the cores this process used itself."""
    wall, total = end.at - start.at, end.total - start.total
    if wall <= 0 or total <= 0:
        return 0.0
    return max(0.0, cpus * (end.busy - start.busy) / total - (end.own - start.own) / wall)


_started: CpuSample | None = None


def command_started(environ: MutableMapping[str, str] = os.environ) -> None:
    """Begin measuring what other processes use (the window ends when `auto` is first resolved, after this
    command's own start-up) and, unless the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT or torch (whose OpenMP
    runtime reads them once, when it loads) is already imported, shorten OpenMP's spinning to SPIN_COUNT."""
    global _started
    _started = cpu_sample()
    if not ("torch" in sys.modules or "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ):
        environ["GOMP_SPINCOUNT"] = SPIN_COUNT


def cgroup_cpu_quota(path: Path = CGROUP_CPU_MAX) -> int | None:
    """The CPUs a cgroup v2 quota (`cpu.max`, e.g. a container's --cpus) grants, rounded up; None without one."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))


def usable_cores() -> int:
    """The cores this process may run on: those of its CPU affinity, at most its cgroup's CPU quota and the
    threads PyTorch has now (its default: one per physical core)."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(n for n in (cores, torch.get_num_threads(), cgroup_cpu_quota()) if n))


def busy_cores_now() -> float:
    """The cores other processes keep busy now: measured since `command_started` (over at least SAMPLE_SECONDS,
    waiting for the rest), or, where the system has no /proc/stat, the 1-minute load average."""
    start = _started if _started is not None and _started.at > time.monotonic() - 60 else cpu_sample()
    if start is None:
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return 0.0
    time.sleep(max(0.0, start.at + SAMPLE_SECONDS - time.monotonic()))
    end = cpu_sample()
    return 0.0 if end is None else others_busy_cores(start, end, os.cpu_count() or 1)


def auto_threads(cores: int, cpus: int, busy: float) -> int:
    """Threads for `auto`: the `cores` this process may use, at most the machine's `cpus` that other processes
    (`busy` cores) leave free, rounded to the nearest; at least 1."""
    return max(1, min(cores, math.floor(cpus - busy + 0.5)))


@functools.cache
def threads_at_start() -> int:
    """`auto_threads` for this machine now, chosen the first time it is asked (a command's start) and kept for
    the process, whose roundings then stay the same."""
    return auto_threads(usable_cores(), os.cpu_count() or 1, busy_cores_now())


def resolve_threads(setting: ThreadSetting, key: str = "train.cpu_threads") -> int:
    """The thread count `setting` asks for: N for N >= 1; 0 for 0 (leave PyTorch's setting) and for `auto`
    where the user set OMP_NUM_THREADS or MKL_NUM_THREADS (which PyTorch follows); otherwise `threads_at_start`.
    Anything else is refused naming `key`."""
    if setting == AUTO:
        return 0 if any(os.environ.get(name) for name in USER_THREAD_VARIABLES) else threads_at_start()
    if isinstance(setting, int) and not isinstance(setting, bool) and setting >= 0:
        return setting
    raise ValueError(f"{key}={setting!r}: give a thread count (1, 2, ...), 0 for PyTorch's default (one per core) "
                     "or auto (the cores other processes leave free)")


@contextmanager
def cpu_threads(setting: ThreadSetting, key: str = "train.cpu_threads") -> Iterator[int]:
    """Run the block with torch's CPU operations on the threads `setting` asks for (`resolve_threads`; 0
    leaves them as they are), yield the count in effect and restore the previous count after the block."""
    import torch

    threads = resolve_threads(setting, key)
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)

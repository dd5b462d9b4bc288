"""How many CPU threads torch's operations use, chosen so that a job sharing its cores with others slows down
in proportion instead of collapsing.

Two causes make a CPU job ten or more times slower beside another one (README, "CPU threads"): more threads
than free cores, and OpenMP workers that spin while they wait for a descheduled peer. `prefer_passive_wait`
makes waiting workers sleep; `cpu_threads("auto")` runs a block with as many threads as there are usable cores
that the machine's load leaves free, chosen once per process.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

ThreadSetting = int | Literal["auto"]
AUTO: Literal["auto"] = "auto"
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
USER_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def prefer_passive_wait(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Set OMP_WAIT_POLICY=PASSIVE in `environ` (idle OpenMP workers sleep instead of spinning) unless the user
    chose a wait policy or spin count, or torch, whose OpenMP runtime reads it once when it loads, is already
    imported; return whether it was set. Child processes inherit it."""
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        return False
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


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


def machine_load() -> float:
    """The machine's 1-minute load average: runnable tasks, about the cores other jobs keep busy; 0 where the
    system keeps none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def auto_threads(cores: int, cpus: int, load: float) -> int:
    """Threads for `auto`: the `cores` this process may use, at most the machine's `cpus` that `load` (runnable
    tasks) leaves free, rounded to the nearest; at least 1."""
    return max(1, min(cores, math.floor(cpus - load + 0.5)))


@functools.cache
def threads_at_start() -> int:
    """`auto_threads` for this machine now, chosen the first time it is asked (a command's start) and kept for
    the process: its own work never counts as another job's load, and its roundings stay the same."""
    return auto_threads(usable_cores(), os.cpu_count() or 1, machine_load())


def resolve_threads(setting: ThreadSetting, key: str = "train.cpu_threads") -> int:
    """The thread count `setting` asks for: N for N >= 1; 0 for 0 (leave PyTorch's setting) and for `auto`
    where the user set OMP_NUM_THREADS or MKL_NUM_THREADS (which PyTorch follows); otherwise `threads_at_start`.
    Anything else is refused naming `key`."""
    if setting == AUTO:
        return 0 if any(os.environ.get(name) for name in USER_THREAD_VARIABLES) else threads_at_start()
    if isinstance(setting, int) and not isinstance(setting, bool) and setting >= 0:
        return setting
    raise ValueError(f"{key}={setting!r}: give a thread count (1, 2, ...), 0 for PyTorch's default (one per core) "
                     "or auto (the cores the machine's load leaves free)")


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

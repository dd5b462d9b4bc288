"""CPU threads (diffalign.threads): `auto` takes the usable cores other processes leave free, judged once per
process as it starts; the CLI runs its commands with it and shortens OpenMP's spinning."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffalign import threads
from diffalign.cli import main as cli
from diffalign.config.core import ConfigError, load_config
from diffalign.config.schema import RunConfig

ROOT = Path(__file__).resolve().parents[1]
REAL_THREADS_AT_START = threads.threads_at_start  # conftest pins the module's to 2 threads


@pytest.mark.parametrize(("cores", "cpus", "load", "expected"), [
    (2, 2, 0.0, 2),  # a quiet machine: every core
    (2, 2, 0.4, 2),  # a passing blip rounds away
    (2, 2, 1.16, 1),  # another job on one core
    (2, 2, 0.6, 1),
    (2, 2, 5.0, 1),  # overloaded: still one thread
    (4, 64, 10.0, 4),  # a 4-core slice of a big machine with cores to spare
    (8, 8, 6.6, 1),
])
def test_auto_takes_the_usable_cores_others_leave_free(cores, cpus, load, expected):
    assert threads.auto_threads(cores, cpus, load) == expected


def test_a_container_quota_caps_the_cores(tmp_path):
    quota = tmp_path / "cpu.max"
    assert threads.cgroup_cpu_quota(tmp_path / "missing") is None
    quota.write_text("max 100000\n")
    assert threads.cgroup_cpu_quota(quota) is None
    quota.write_text("150000 100000\n")  # docker --cpus=1.5
    assert threads.cgroup_cpu_quota(quota) == 2


def test_auto_is_chosen_once_per_process_at_its_start(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    REAL_THREADS_AT_START.cache_clear()
    try:
        monkeypatch.setattr(threads, "busy_cores_now", lambda: 1.3)
        assert REAL_THREADS_AT_START() == 1
        monkeypatch.setattr(threads, "busy_cores_now", lambda: 0.0)
        assert REAL_THREADS_AT_START() == 1
    finally:
        REAL_THREADS_AT_START.cache_clear()


def test_usable_cores_are_at_most_the_affinity_and_torchs_threads(monkeypatch):
    torch.set_num_threads(1)
    assert threads.usable_cores() == 1
    if hasattr(os, "sched_getaffinity"):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
        torch.set_num_threads(2)
        assert threads.usable_cores() == 1


def test_settings_resolve_to_thread_counts(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "threads_at_start", lambda: 3)
    assert threads.resolve_threads(4) == 4
    assert threads.resolve_threads(0) == 0  # PyTorch's own setting
    assert threads.resolve_threads("auto") == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.resolve_threads("auto") == 0  # the user's OMP_NUM_THREADS, which PyTorch follows


@pytest.mark.parametrize("bad", [-1, "many", True, 1.5])
def test_a_bad_setting_is_refused_naming_its_key(bad):
    with pytest.raises(ValueError) as error:
        threads.resolve_threads(bad)
    assert str(error.value) == (
        f"train.cpu_threads={bad!r}: give a thread count (1, 2, ...), 0 for PyTorch's default (one per core) or "
        "auto (the cores other processes leave free)"
    )


def test_the_block_runs_on_the_threads_asked_for_and_restores_them():
    torch.set_num_threads(2)
    with threads.cpu_threads(1) as count:
        assert count == torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with threads.cpu_threads(0) as count:
        assert count == 2
    with pytest.raises(RuntimeError), threads.cpu_threads(1):
        raise RuntimeError("the block failed")
    assert torch.get_num_threads() == 2


def test_the_config_default_is_auto_and_takes_counts():
    assert load_config(RunConfig, None).train.cpu_threads == "auto"
    assert load_config(RunConfig, None, ["train.cpu_threads=3"]).train.cpu_threads == 3
    assert load_config(RunConfig, None, ["train.cpu_threads=auto"]).train.cpu_threads == "auto"
    with pytest.raises(ConfigError, match="train.cpu_threads"):
        load_config(RunConfig, None, ["train.cpu_threads=many"])


def test_commands_without_a_training_config_run_with_the_auto_thread_count(monkeypatch, tmp_path):
    from diffalign.cli import generate

    seen = []
    monkeypatch.setattr(threads, "threads_at_start", lambda: 1)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(generate, "cmd_generate", lambda args: seen.append(torch.get_num_threads()) or 0)
    assert cli.main(["generate", "some-model", "--out", str(tmp_path / "images")]) == 0
    assert seen == [1] and torch.get_num_threads() == 2  # restored after the command


def test_a_negative_thread_count_stops_training_with_one_line(tmp_path, capsys):
    code = cli.main(["train", "train.cpu_threads=-2", "train.cpu=true", f"train.output_dir={tmp_path / 'run'}"])
    assert code == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        "diffalign train: error: train.cpu_threads=-2: give a thread count (1, 2, ...), 0 for PyTorch's default "
        "(one per core) or auto (the cores other processes leave free)"
    )


def test_other_processes_busy_cores_are_the_machines_less_this_ones(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 20 30 400 50 1 2 3 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    sample = threads.cpu_sample(stat)
    assert (sample.busy, sample.total) == (100 + 20 + 30 + 1 + 2 + 3, 606)  # idle and iowait are not busy
    assert threads.cpu_sample(tmp_path / "missing") is None
    start = threads.CpuSample(busy=0, total=0, own=5.0, at=10.0)
    # 2 seconds on 4 CPUs: 800 ticks, 600 busy = 3 cores, of which this process used 1 (2 CPU seconds)
    assert threads.others_busy_cores(start, threads.CpuSample(600, 800, 7.0, 12.0), cpus=4) == pytest.approx(2.0)
    assert threads.others_busy_cores(start, threads.CpuSample(100, 800, 7.0, 12.0), cpus=4) == 0.0  # never < 0
    assert threads.others_busy_cores(start, start, cpus=4) == 0.0


def test_busy_cores_are_measured_since_the_command_started_or_read_from_the_load_average(monkeypatch):
    now = time.monotonic()
    samples = iter([threads.CpuSample(0, 0, 0.0, now - 1.0), threads.CpuSample(150, 200, 0.5, now)])
    monkeypatch.setattr(threads, "cpu_sample", lambda: next(samples))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads, "_started", None)
    threads.command_started({})
    assert threads.busy_cores_now() == pytest.approx(2 * 150 / 200 - 0.5)  # 1 of 2 cores: another process's
    monkeypatch.setattr(threads, "_started", None)
    monkeypatch.setattr(threads, "cpu_sample", lambda: None)  # no /proc/stat
    monkeypatch.setattr(os, "getloadavg", lambda: (1.25, 1.0, 1.0))
    assert threads.busy_cores_now() == 1.25


def test_a_process_that_keeps_a_core_busy_counts_as_busy(monkeypatch):
    spin = "import time\nend = time.time() + 5\nprint('spinning', flush=True)\nwhile time.time() < end: pass"
    busy = subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE, text=True)
    try:
        assert busy.stdout.readline() == "spinning\n"
        monkeypatch.setattr(threads, "_started", None)
        threads.command_started({})
        assert threads.busy_cores_now() >= 0.5
    finally:
        busy.kill()
        busy.wait()


def test_the_spin_is_shortened_only_before_torch_loads_and_never_over_the_users(monkeypatch):
    monkeypatch.setattr(threads, "_started", None)
    environ: dict[str, str] = {}
    threads.command_started(environ)
    assert environ == {}  # torch is loaded here: too late to matter
    monkeypatch.delitem(sys.modules, "torch")
    threads.command_started(environ)
    assert environ == {"GOMP_SPINCOUNT": "10000"}
    for users in ({"OMP_WAIT_POLICY": "PASSIVE"}, {"GOMP_SPINCOUNT": "300000"}):
        environ = dict(users)
        threads.command_started(environ)
        assert environ == users


def test_the_cli_shortens_the_spin_before_torch_loads_and_config_does_not_load_torch():
    probe = ("import os, sys; from diffalign.cli.main import main; main(['config', 'show']); "
             "print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules, file=sys.stderr)")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert done.stderr.splitlines()[-1] == "10000 False"

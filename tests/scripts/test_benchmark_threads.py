"""scripts/benchmark_threads.py times `diffalign` workloads alone and two side by side under thread settings."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

from diffalign.cli.main import build_parser
from diffalign.config.core import load_config
from diffalign.config.schema import RunConfig

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("benchmark_threads", ROOT / "scripts" / "benchmark_threads.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_workloads_are_valid_diffalign_commands(tmp_path):
    bench = _script()
    for workload in ("train", "cache"):
        arguments = bench.workload_args(workload, tmp_path, steps=3, pairs=8)
        args, unknown = build_parser().parse_known_args(arguments)
        assert args.command == workload and not unknown
        cfg = load_config(RunConfig, ROOT / args.items[0], [item for item in args.items if "=" in item])
        assert str(cfg.data.cache_dir).startswith(str(tmp_path))
        assert cfg.train.max_steps == 3 if workload == "train" else cfg.data.max_pairs == 8
    assert bench.command_for(["cache"])[:2] == [sys.executable, "-c"]
    with pytest.raises(ValueError, match="--workloads: unknown workload 'eval'"):
        bench.workload_args("eval", tmp_path, 3, 8)


def test_the_settings_set_the_old_default_and_leave_the_new_one_to_the_cli():
    bench = _script()
    base = {"PATH": "/bin", "OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "7"}
    assert bench.setting_env("old", base, 2) == {"PATH": "/bin", "OMP_NUM_THREADS": "2", "GOMP_SPINCOUNT": "300000"}
    assert bench.setting_env("new", base, 2) == {"PATH": "/bin"}
    assert bench.setting_env("auto", base, 2) == {"PATH": "/bin", "GOMP_SPINCOUNT": "300000"}
    assert bench.setting_env("spin", base, 2) == {"PATH": "/bin", "OMP_NUM_THREADS": "2"}  # the CLI's spin
    passive = {"PATH": "/bin", "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}
    assert bench.setting_env("passive", base, 2) == passive
    assert bench.setting_env("one", base, 2) == {"PATH": "/bin", "OMP_NUM_THREADS": "1"}
    with pytest.raises(ValueError, match="unknown setting 'fast'"):
        bench.setting_env("fast", base, 2)


def test_the_child_runs_diffalign_and_reports_its_threads_and_the_wait_the_cli_chose(tmp_path):
    bench = _script()
    env = bench.setting_env("one", dict(os.environ), 2)
    seconds, reported = bench.timed(bench.command_for(["config", "show"]), env, tmp_path / "log", "config")
    assert reported == "1 GOMP_SPINCOUNT=10000" and seconds > 0


def _ran(folder: Path, name: str) -> list[float]:
    return [float(t) for t in (folder / name).read_text().split()]


NAP = ("import sys, time; start = time.time(); time.sleep(0.3); print('diffalign-threads 2 default'); "
       "open(sys.argv[1], 'w').write(f'{start} {time.time()}')")


def test_it_runs_each_workload_alone_then_two_together_and_staggered_and_prints_the_ratios(
        monkeypatch, capsys, tmp_path):
    bench = _script()
    monkeypatch.setattr(bench, "workload_args", lambda workload, folder, steps, pairs: [
        str(tmp_path / f"{folder.parent.name}-{folder.name}")])  # each run records when it ran, in tmp_path
    monkeypatch.setattr(bench, "command_for", lambda args: [sys.executable, "-c", NAP, *args])
    monkeypatch.setattr(sys, "argv", ["benchmark_threads.py", "--workloads", "cache", "--settings", "old,new",
                                      "--modes", "quiet,together,staggered", "--stagger", "0.2"])
    bench.main()
    out = capsys.readouterr().out
    assert "train: 30 KTO demo steps, cache: 512 pairs, staggered: 0.2 s apart" in out
    number = r"\s+([\d.]+)"
    rows = re.findall(rf"^(train|cache)\s+(old|new): .*?\s+(\S+)\s+[\d.]+{number * 5}$", out, re.M)
    assert [(w, s) for w, s, *_ in rows] == [("cache", "old"), ("cache", "new")]
    for workload, setting, threads, quiet, together, ratio, staggered, staggered_ratio in rows:
        assert threads == "2/2,2/2,2"
        assert float(quiet) >= 0.3 and float(together) >= 0.3 and float(staggered) >= 0.3
        assert float(ratio) == pytest.approx(float(together) / float(quiet), abs=0.06)
        assert float(staggered_ratio) == pytest.approx(float(staggered) / float(quiet), abs=0.06)
        (a0, a1), (b0, b1) = (_ran(tmp_path, f"{workload}-{setting}-together-{i}") for i in (0, 1))
        assert a0 < b1 and b0 < a1  # the pair ran at the same time
        (a0, _), (b0, _) = (_ran(tmp_path, f"{workload}-{setting}-staggered-{i}") for i in (0, 1))
        assert b0 - a0 >= 0.1  # the second started later (0.2 s, less the first's slower start-up)
    assert len(list(tmp_path.iterdir())) == 2 * 5  # one quiet run and two of each pair


def test_a_failing_workload_stops_it_with_the_end_of_its_output(monkeypatch):
    bench = _script()
    fail = "import sys; print('no such model'); sys.exit(3)"
    monkeypatch.setattr(bench, "command_for", lambda args: [sys.executable, "-c", fail])
    monkeypatch.setattr(sys, "argv", ["benchmark_threads.py", "--workloads", "cache", "--settings", "one"])
    message = r"^benchmark_threads: the cache one quiet run failed \(exit 3\):\nno such model$"
    with pytest.raises(SystemExit, match=message):
        bench.main()


def test_a_pair_needs_a_quiet_run_first_to_compare_with(monkeypatch):
    bench = _script()
    monkeypatch.setattr(sys, "argv", ["benchmark_threads.py", "--modes", "together"])
    with pytest.raises(SystemExit, match="--modes: quiet first, then any of together, staggered; not together"):
        bench.main()

"""scripts/benchmark_threads.py times `diffalign` workloads alone and two side by side under thread settings."""

from __future__ import annotations

import importlib.util
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
        command = bench.workload_command(workload, tmp_path, steps=3, pairs=8)
        args, unknown = build_parser().parse_known_args(command[3:])
        assert args.command == workload and not unknown
        overrides = [item for item in args.items if "=" in item]
        cfg = load_config(RunConfig, ROOT / args.items[0], overrides)
        assert str(cfg.data.cache_dir).startswith(str(tmp_path))
    assert load_config(RunConfig, ROOT / bench.DEMO, command[5:]).data.max_pairs == 8
    with pytest.raises(ValueError, match="--workloads: unknown workload 'eval'"):
        bench.workload_command("eval", tmp_path, 3, 8)


def test_the_settings_set_the_old_default_and_leave_the_new_one_to_the_cli():
    bench = _script()
    base = {"PATH": "/bin", "OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "7"}
    assert bench.setting_env("old", base, 2) == {"PATH": "/bin", "OMP_NUM_THREADS": "2", "GOMP_SPINCOUNT": "300000"}
    assert bench.setting_env("new", base, 2) == {"PATH": "/bin"}
    assert bench.setting_env("one", base, 2) == {"PATH": "/bin", "OMP_NUM_THREADS": "1"}
    with pytest.raises(ValueError, match="unknown setting 'fast'"):
        bench.setting_env("fast", base, 2)


def test_it_runs_each_workload_quiet_then_two_side_by_side_and_prints_the_ratio(monkeypatch, capsys, tmp_path):
    bench = _script()
    nap = "import sys, time; start = time.time(); time.sleep(0.5); open(sys.argv[1], 'w').write(f'{start} {time.time()}')"

    def fake(workload, folder, steps, pairs):  # each run records when it ran, in tmp_path
        return [sys.executable, "-c", nap, str(tmp_path / f"{folder.parent.name}-{folder.name}")]

    monkeypatch.setattr(bench, "workload_command", fake)
    monkeypatch.setattr(sys, "argv", ["benchmark_threads.py", "--workloads", "train,cache", "--settings", "old,new"])
    bench.main()
    out = capsys.readouterr().out
    assert "train: 30 KTO demo steps, cache: 512 pairs" in out
    rows = re.findall(r"^(train|cache)\s+(old|new): .*?\s+(\S+/\S+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    assert [(w, s) for w, s, *_ in rows] == [("train", "old"), ("train", "new"), ("cache", "old"), ("cache", "new")]
    for workload, setting, threads, quiet, loaded, ratio in rows:
        assert float(quiet) >= 0.5 and float(loaded) >= 0.5
        assert float(ratio) == pytest.approx(float(loaded) / float(quiet), abs=0.06)
        assert threads == "2/2" if setting == "old" else re.fullmatch(r"\d+/\d+", threads)  # conftest's 2
        (a0, a1), (b0, b1) = ([float(t) for t in (tmp_path / f"{workload}-{setting}-loaded-{i}").read_text().split()]
                              for i in (0, 1))
        assert a0 < b1 and b0 < a1  # the loaded pair ran at the same time
    assert len(list(tmp_path.iterdir())) == 4 * 3  # one quiet run and two loaded ones each


def test_a_failing_workload_stops_it_with_the_end_of_its_output(monkeypatch):
    bench = _script()
    fail = "import sys; print('no such model'); sys.exit(3)"
    monkeypatch.setattr(bench, "workload_command", lambda workload, folder, steps, pairs: [sys.executable, "-c", fail])
    monkeypatch.setattr(sys, "argv", ["benchmark_threads.py", "--workloads", "cache", "--settings", "one"])
    message = r"^benchmark_threads: the cache one quiet run failed \(exit 3\):\nno such model$"
    with pytest.raises(SystemExit, match=message):
        bench.main()

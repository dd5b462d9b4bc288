"""scripts/benchmark_processes.py: the launch lines it times and the file comparison that says whether N processes
wrote what one wrote (the benchmark itself runs by hand: minutes)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("benchmark_processes", ROOT / "scripts" / "benchmark_processes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_process_runs_the_cli_and_several_run_under_accelerate_with_the_threads_split():
    script = _script()
    prefix, env = script._launch(1, 2)
    assert prefix == [sys.executable, "-m", "diffalign.cli.main"] and env["OMP_NUM_THREADS"] == "2"
    prefix, env = script._launch(2, 1)
    assert prefix[:5] == [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2"]
    # torchrun starts both processes on the CPU too; accelerate's --cpu launcher would start one without MPI
    assert "--multi_gpu" in prefix and "--cpu" not in prefix and prefix[-2:] == ["-m", "diffalign.cli.main"]
    assert env["OMP_NUM_THREADS"] == "1"


def test_outputs_compare_every_visible_file_byte_for_byte(tmp_path):
    script = _script()
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        (folder / "sub").mkdir(parents=True)
        (folder / "metadata.jsonl").write_text('{"seed": 0}\n')
        (folder / "sub" / "p00000-s0.png").write_bytes(b"\x89PNG1")
    (a / ".processes").mkdir()
    (a / ".processes" / "draw-00000.json").write_text("{}")  # bookkeeping is not output
    assert script._same_files(a, b)
    (b / "sub" / "p00000-s0.png").write_bytes(b"\x89PNG2")
    assert not script._same_files(a, b)
    (b / "sub" / "p00000-s0.png").write_bytes(b"\x89PNG1")
    (b / "extra.png").write_bytes(b"")
    assert not script._same_files(a, b)

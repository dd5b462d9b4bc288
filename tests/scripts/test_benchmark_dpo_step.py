"""scripts/benchmark_dpo_step.py times the loop's own step per phase, for several objectives side by side."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_it_times_every_phase_of_each_objective_and_the_ratio_to_the_first(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sys, "argv", [
        "benchmark_dpo_step.py", "--objectives", "dpo,mapo", "--pairs", "2", "--steps", "2", "--warmup", "1",
        "--device", "cpu", "data.cache=off", f"data.cache_dir={tmp_path}", "train.cpu_threads=1",
    ])
    runpy.run_path(str(ROOT / "scripts" / "benchmark_dpo_step.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "optimizer step: 2 pairs, 32 px" in out and "device cpu, torch threads 1" in out
    dpo, mapo = out.split("\ndpo: median step")[1].split("\nmapo: median step")
    assert re.search(r"\(\d+\.\d\dx dpo\)", mapo.splitlines()[0])  # the second objective against the first
    phases = {name: {m[0]: float(m[1]) for m in re.findall(r"^  (\S+)\s+median\s+([\d.]+) ms", text, re.M)}
              for name, text in (("dpo", dpo), ("mapo", mapo))}
    for name in ("dpo", "mapo"):
        assert set(phases[name]) == {"data", "encode", "forward", "reference", "backward+opt", "total"}
        assert phases[name]["forward"] > 0 and phases[name]["backward+opt"] > 0
    assert phases["dpo"]["reference"] > 0  # the adapters-off reference forward, timed apart
    assert phases["mapo"]["reference"] == 0  # MaPO declares no reference

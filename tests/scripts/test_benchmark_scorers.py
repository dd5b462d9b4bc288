"""scripts/benchmark_scorers.py builds the replicas, scores through the registry and prints one JSON line per run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_run_on_tiny_replicas(tmp_path):
    out = tmp_path / "scorers.jsonl"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark_scorers.py"), "--device", "cpu", "--size", "tiny",
         "--images", "4", "--batch-size", "2", "--image-size", "32", "--dtypes", "fp32", "bf16", "--out", str(out)],
        check=True, capture_output=True, text=True,
    )
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    runs = {(r["scorer"], r["dtype"], r["attention"]) for r in lines}
    assert runs == {("pickscore", "fp32", "sdpa"), ("pickscore", "bf16", "sdpa"), ("pickscore", "bf16", "eager"),
                    ("hpsv2.1", "fp32", "sdpa"), ("hpsv2.1", "bf16", "sdpa")}
    assert all("error" not in r and r["images"] == 4 and r["images_per_s"] > 0 for r in lines)
    bf16 = [r for r in lines if r["dtype"] == "bf16"]
    assert all(0 < r["max_abs_diff_vs_fp32"] < 1 for r in bf16)

"""pipelines/benchmark-methods.yaml end to end on a reduced budget: every method trains, one evaluation,
and the methods table holds a row per method with its confidence intervals."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from diffalign.cli.pipeline import load_recipe, run_recipe
from diffalign.config.objectives import registered_objectives

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "pipelines" / "benchmark-methods.yaml"


def test_the_recipe_lists_every_registered_method():
    methods = yaml.safe_load(RECIPE.read_text())["vars"]["methods"].split(",")
    assert set(registered_objectives()) <= set(methods)
    assert all((ROOT / "configs" / "demo" / f"{m}.yaml").is_file() for m in methods)


def test_the_benchmark_recipe_runs_end_to_end_on_a_reduced_budget(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pq.read_table(ROOT / "assets" / "demo" / "pairs_train.parquet").slice(0, 16), pairs)
    out = tmp_path / "bench"
    _, steps = load_recipe(RECIPE, [
        f"out={out}", "seeds=0", "steps=1", f"pairs={pairs}",
        "train_args=train.batch_size=2 train.warmup_steps=0 rollout.prompts_per_round=2 rollout.sample_batch_size=2",
        "eval_args=--max-prompts 1 --seeds 0,1",
    ])
    assert run_recipe(steps, in_process=True) == 0, capsys.readouterr().err[-2000:]
    table = (out / "methods.md").read_text()
    methods = yaml.safe_load(RECIPE.read_text())["vars"]["methods"].split(",")
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| method")}
    assert set(rows) == set(methods)
    ci = r"[+-]\d\.\d{3} \([+-]\d\.\d{3} to [+-]\d\.\d{3}\)"
    pct = r"\d+\.\d % \(\d+\.\d–\d+\.\d\)"
    for method, line in rows.items():
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == "1" and re.fullmatch(ci, cells[2]) and re.fullmatch(pct, cells[3]), line
        assert re.fullmatch(pct, cells[4]) and cells[6].endswith("min"), line

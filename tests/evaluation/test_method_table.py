"""The methods table: runs grouped by method, seeds pooled with a prompt bootstrap, per-prompt win rates,
each run's figures and its training time."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from diffalign.evaluation.method_table import method_rows, render_method_table, write_method_table
from diffalign.evaluation.stats import compare_paired


def _evaluation(tmp_path, tuned: dict[str, np.ndarray], base: np.ndarray, prompts: np.ndarray):
    """An evaluation folder as `diffalign eval` writes it (results.json, scores.csv), each tuned model's run
    folder with a metrics.jsonl whose last `seconds` is 60 x (its index + 1)."""
    models = [{"name": "base", "role": "base", "loras": []}]
    for i, name in enumerate(tuned):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "seconds": 1.0}) + "\n"
                                           + json.dumps({"step": 2, "seconds": 60.0 * (i + 1)}) + "\n")
        models.append({"name": name, "role": "tuned", "loras": [{"path": str(run), "scale": 1.0}]})
    folder = tmp_path / "eval"
    folder.mkdir()
    settings = {"prompt_set": "demo", "prompts": int(prompts.max()) + 1, "seeds": [0, 1], "sampler": "ddim",
                "steps": 20, "guidance": 5.0, "tie_tolerance": 0.0}
    (folder / "results.json").write_text(json.dumps({"settings": settings, "models": models,
                                                     "scorers": {"shapes": {}}}))
    with open(folder / "scores.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "prompt_index", "prompt", "category", "seed", "base/shapes",
                         *(f"{n}/shapes" for n in tuned)])
        for row, p in enumerate(prompts):
            writer.writerow([row, p, f"prompt {p}", "", row % 2, repr(float(base[row])),
                             *(repr(float(v[row])) for v in tuned.values())])
    return folder


def test_runs_are_grouped_by_method_and_pooled(tmp_path):
    rng = np.random.default_rng(0)
    prompts = np.repeat(np.arange(10), 2)  # 10 prompts x 2 seeds
    base = rng.random(20)
    tuned = {"dpo-seed0": base + 0.1, "dpo-seed1": base - 0.05 + 0.2 * (np.arange(20) % 3 == 0),
             "mapo-seed0": base + rng.normal(0, 0.1, 20), "sft": base - 0.02}
    folder = _evaluation(tmp_path, tuned, base, prompts)
    rows = {r.method: r for r in method_rows(folder, resamples=500)}
    assert set(rows) == {"dpo", "mapo", "sft"} and rows["dpo"].seeds == [0, 1] and rows["sft"].seeds == [None]
    pooled = compare_paired(np.concatenate([tuned["dpo-seed0"], tuned["dpo-seed1"]]), np.concatenate([base, base]),
                            np.concatenate([prompts, prompts]), 0.0, 500, 0)
    assert rows["dpo"].win_rate == pooled.win_rate_decided.as_dict()
    assert rows["dpo"].gain["value"] == pytest.approx(np.mean(np.concatenate([tuned["dpo-seed0"], tuned["dpo-seed1"]]) - np.concatenate([base, base])))
    assert [p["win_rate"] for p in rows["dpo"].per_run] == pytest.approx([1.0, np.mean(tuned["dpo-seed1"] > base)])
    # per prompt: each prompt's two seeds averaged first, for the base and the run
    by_prompt = tuned["mapo-seed0"].reshape(10, 2).mean(1) > base.reshape(10, 2).mean(1)
    assert rows["mapo"].prompt_win_rate["value"] == pytest.approx(by_prompt.mean())
    assert rows["dpo"].seconds == [60.0, 120.0] and rows["sft"].seconds == [240.0]


def test_the_markdown_table(tmp_path):
    prompts = np.repeat(np.arange(6), 2)
    base = np.linspace(0, 1, 12)
    folder = _evaluation(tmp_path, {"kto-seed0": base + 0.1, "kto-seed1": base + 0.1, "ipo-seed0": base - 0.1},
                         base, prompts)
    path = write_method_table(folder, resamples=200)
    text = path.read_text()
    assert path == folder / "methods.md"
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[1].startswith("| kto | 2 | +0.100 (+0.100 to +0.100) | 100.0 % (100.0–100.0) | 100.0 % (100.0–100.0) |")
    assert "100.0 % / +0.100, 100.0 % / +0.100" in lines[1] and lines[1].endswith("| 1.5 min (1.0–2.0) |")
    assert lines[2].startswith("| ipo | 1 | -0.100") and "0.0 % (0.0–0.0)" in lines[2]
    assert "6 prompts (demo)" in text
    assert render_method_table(method_rows(folder, resamples=200)) in text


def test_a_missing_scorer_column_is_named(tmp_path):
    folder = _evaluation(tmp_path, {"dpo": np.ones(4)}, np.zeros(4), np.arange(4))
    with pytest.raises(ValueError, match=r"no column\(s\) \['base/pickscore', 'dpo/pickscore'\]"):
        method_rows(folder, scorer="pickscore")


def test_the_command_takes_one_scorer_and_refuses_several(tmp_path, capsys):
    from diffalign.cli.main import main

    folder = _evaluation(tmp_path, {"dpo": np.ones(4)}, np.zeros(4), np.arange(4))
    assert main(["method-table", str(folder), "--scorer", "shapes", "--resamples", "50",
                 "--out", str(tmp_path / "m.md")]) == 0
    assert "| dpo |" in (tmp_path / "m.md").read_text()
    capsys.readouterr()
    assert main(["method-table", str(folder), "--scorer", "shapes,pickscore", "--out", str(tmp_path / "m.md")]) == 2
    assert ("diffalign method-table: error: --scorer shapes,pickscore: the methods table is of one scorer; give one "
            "of them") in capsys.readouterr().err

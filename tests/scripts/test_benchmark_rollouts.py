"""scripts/benchmark_rollouts.py: online-round sampling against the stock pipeline, and a run's round split."""

from __future__ import annotations

import json
import re
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "benchmark_rollouts.py"
QUICK = ["--device", "cpu", "--images", "2", "--steps", "2", "--repeats", "1"]


def run_script(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    """Run the script in this process; (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", [SCRIPT.name, *argv])
    code = 0
    try:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def write_rounds(run: Path, *entries: dict | str) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    lines = [entry if isinstance(entry, str) else json.dumps(entry) for entry in entries]
    (run / "rounds.jsonl").write_text("\n".join(lines) + "\n")
    return run


def test_it_prints_both_rates_the_ratio_and_that_both_draw_the_same_images(monkeypatch, capsys, tmp_path):
    out_json = tmp_path / "figures.json"
    code, out, err = run_script(monkeypatch, capsys, *QUICK, "--threads", "1", "--json", str(out_json))
    assert code == 0, err
    assert "2 images in batches of 2, 32 px, 2 DDIM steps, eta 1, guidance 5, float32" in out
    assert "device cpu (1 torch threads)" in out
    ours = re.search(r"diffalign sample_trajectory \(log-probs\)\s+([\d.]+) images/s", out)
    theirs = re.search(r"StableDiffusionPipeline\s+([\d.]+) images/s", out)
    ratio = re.search(r"ratio ours/diffusers ([\d.]+) .*: (meets|BELOW) the target >= 0.9", out)
    assert ours and theirs and ratio
    # float32 on the CPU: the same noise streams, so the same pixels at eta 1 and at eta 0
    assert "eta=1: max |ours - diffusers| = 0 uint8 levels (tolerance 2): the same images" in out
    assert "eta=0: max |ours - diffusers| = 0 uint8 levels (tolerance 2): the same images" in out
    figures = json.loads(out_json.read_text())["sampling"]
    assert figures["same_images"] is True and figures["max_level_diff"] == {"eta=1": 0, "eta=0": 0}
    assert figures["ours_images_per_s"] > 0 and figures["diffusers_images_per_s"] > 0
    assert figures["ratio"] == pytest.approx(figures["ours_images_per_s"] / figures["diffusers_images_per_s"])
    assert float(ratio[1]) == pytest.approx(figures["ratio"], abs=5e-4)
    assert (ratio[2] == "meets") == figures["meets_target"] == (figures["ratio"] >= 0.9)
    assert "round_split" not in json.loads(out_json.read_text())


def test_an_sdxl_model_is_timed_against_the_sdxl_pipeline(monkeypatch, capsys, tiny_models):
    code, out, err = run_script(monkeypatch, capsys, *QUICK, "--eta", "0", "--model", str(tiny_models["sdxl"]))
    assert code == 0, err
    assert re.search(r"StableDiffusionXLPipeline\s+[\d.]+ images/s", out)
    assert "eta=0: max |ours - diffusers| = 0 uint8 levels (tolerance 2): the same images" in out
    assert "eta=1" not in out  # eta 0 is the benchmark's own setting: compared once


def test_the_round_split_is_the_median_of_each_phase(monkeypatch, capsys, tmp_path):
    run = write_rounds(
        tmp_path / "run",
        {"round": 0, "reward_mean": 0.1},  # an older loop's line, without the split
        {"round": 1, "sample_s": 10.0, "reward_s": 1.0, "train_s": 30.0},
        {"round": 2, "sample_s": 12.0, "reward_s": 2.0, "train_s": 20.0},
        "",
        {"round": 3, "sample_s": 8.0, "reward_s": 3.0, "train_s": 25.0},
    )
    out_json = tmp_path / "split.json"
    code, out, err = run_script(monkeypatch, capsys, "--round-run", str(run), "--no-sampling", "--json", str(out_json))
    assert code == 0, err
    assert "sampling:" not in out
    assert f"round split of {run / 'rounds.jsonl'}: median over 3 round(s); lines [1] left out" in out
    rows = {m[0]: (float(m[1]), float(m[2])) for m in re.findall(r"^  (\w+)\s+([\d.]+) s\s+([\d.]+)%", out, re.M)}
    assert rows == {"sample": (10.0, 27.0), "reward": (2.0, 5.4), "train": (25.0, 67.6)}  # of 37 s
    assert re.search(r"^  round\s+37.00 s  \(the sum of the medians\)", out, re.M)
    split = json.loads(out_json.read_text())["round_split"]
    assert split["rounds"] == 3 and split["total_s"] == 37.0 and split["skipped_lines"] == [1]


@pytest.mark.parametrize(("content", "message"), [
    (None, "RUN/rounds.jsonl does not exist: --round-run takes the output folder of an online run (DDPO, GRPO, "
           "D3PO), which writes it after each round"),
    ([""], "RUN/rounds.jsonl holds no rounds (the run stopped before its first round ended?)"),
    ([{"round": 0, "reward_mean": 0.5, "win_rate_vs_base": None}, {"round": 1, "reward_mean": 0.6}],
     "RUN/rounds.jsonl: none of its 2 rounds records sample_s, reward_s, train_s (its keys: reward_mean, round, "
     "win_rate_vs_base): the loop that wrote it does not time its rounds' phases"),
    ([{"round": 0, "sample_s": 1, "reward_s": 1, "train_s": 1}, "{not json"],
     "RUN/rounds.jsonl line 2 is not JSON: Expecting property name enclosed in double quotes: line 1 column 2 "
     "(char 1)"),
    (["[1, 2]"], "RUN/rounds.jsonl line 1 is not a JSON object: [1, 2]"),
    ([{"round": 0, "sample_s": 1, "reward_s": "2 s", "train_s": 1}],
     "RUN/rounds.jsonl line 1: reward_s is '2 s', expected seconds (a number >= 0)"),
    ([{"round": 0, "sample_s": 1, "reward_s": 1, "train_s": -3}],
     "RUN/rounds.jsonl line 1: train_s is -3, expected seconds (a number >= 0)"),
])
def test_a_bad_rounds_file_is_a_one_line_error_before_anything_is_timed(monkeypatch, capsys, tmp_path, content,
                                                                         message):
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        write_rounds(run, *content)
    code, out, err = run_script(monkeypatch, capsys, *QUICK, "--round-run", str(run))
    assert code == 2 and out == ""  # sampling (the slow part) never started
    assert err == f"benchmark_rollouts.py: error: {message.replace('RUN', str(run))}\n"


def test_a_folder_that_is_no_model_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    code, out, err = run_script(monkeypatch, capsys, *QUICK, "--model", str(tmp_path))
    assert code == 2 and out == ""
    assert err == (f"benchmark_rollouts.py: error: --model {tmp_path}: model folder {tmp_path} is not a diffusers "
                   "pipeline folder (no model_index.json or unet/)\n")


def test_a_missing_run_folder_no_sampling_without_a_run_and_bad_threads_are_errors(monkeypatch, capsys, tmp_path):
    code, out, err = run_script(monkeypatch, capsys, "--round-run", str(tmp_path / "nope"), "--no-sampling")
    assert code == 2
    assert err == (f"benchmark_rollouts.py: error: --round-run {tmp_path / 'nope'}: no such folder (give the output "
                   "folder of an online run)\n")
    code, out, err = run_script(monkeypatch, capsys, "--no-sampling")
    assert code == 2
    assert err.endswith("benchmark_rollouts.py: error: --no-sampling leaves only the round split: give --round-run "
                        "RUN_DIR\n")
    code, out, err = run_script(monkeypatch, capsys, "--threads", "two")
    assert code == 2
    assert err.endswith("benchmark_rollouts.py: error: --threads two: expected a whole number of threads or auto\n")

"""`diffalign pairs` end to end: schema, resumption, dataset card, training on the pairs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import pytest
from PIL import Image

from diffalign.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "assets" / "tiny-sd")
PROMPTS = ["a red circle on a blue background", "a small green square on a white background",
           "a large yellow triangle on a black background", "a blue circle on a white background"]


def _pairs(tmp_path: Path, out: Path, *extra: str) -> int:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return main(["pairs", "--prompts", str(prompts), "--model", TINY, "--scorer", "shapes", "--k", "3", "--steps", "3",
                 "--shard-size", "2", "--out", str(out), "--no-progress", "--device", "cpu", *extra])


def test_pairs_resume_without_redoing_prompts_then_train_on_them(tmp_path, capsys):
    out = tmp_path / "pairs"
    assert _pairs(tmp_path, out, "--max-prompts", "2") == 0
    printed = capsys.readouterr().out
    assert "2 prompt(s) done (2 in this run)" in printed and "2 prompt(s) left: rerun without --max-prompts" in printed
    first = {p.name: p.read_bytes() for p in (out / "data").iterdir()}
    assert _pairs(tmp_path, out) == 0
    assert "4 prompt(s) done (2 in this run)" in capsys.readouterr().out
    assert all((out / "data" / name).read_bytes() == data for name, data in first.items())  # not redone
    assert _pairs(tmp_path, out) == 0
    assert "(0 in this run)" in capsys.readouterr().out

    table = datasets.load_dataset(str(out), split="train")  # the card's front matter names the shards
    progress = json.loads((out / "progress.json").read_text())
    assert len(table) == sum(s["rows"] for s in progress["shards"]) == progress["totals"]["pairs"]
    assert set(table["caption"]) <= set(PROMPTS)
    assert len(table["caption"]) == len(set(table["caption"]))  # best-worst: one pair per prompt, none twice
    assert progress["totals"]["prompts"] == 4 and from_done(progress) == {0, 1, 2, 3}
    for column in ("jpg_0", "jpg_1", "label_0", "label_1", "score_shapes_0", "score_shapes_1", "score_0", "score_1",
                   "pref_prob_0", "seed_0", "seed_1", "model_0", "model_1"):
        assert column in table.column_names, column
    for row in table:
        winner = 0 if row["label_0"] == 1.0 else 1
        assert row[f"score_{winner}"] > row[f"score_{1 - winner}"]
        assert row["score_0"] == row["score_shapes_0"] and (row["pref_prob_0"] > 0.5) == (winner == 0)
        assert Image.open(io.BytesIO(row["jpg_0"])).size == (32, 32) and row["model_0"] == "tiny-sd"
    card = (out / "README.md").read_text()
    assert "diffalign pairs" in card and '"k": 3' in card and "mean attribute score" in card
    with pytest.raises(SystemExit):
        main(["pairs", "--help"])
    assert "accelerate launch --num_processes N -m\ndiffalign.cli.main pairs ..." in capsys.readouterr().out
    assert _pairs(tmp_path, out, "--k", "2") == 2
    assert "k: 3 there, 2 now" in capsys.readouterr().err

    run = tmp_path / "run"
    assert main(["train", f"data.path={out}", f"train.output_dir={run}", "train.max_steps=2", "train.batch_size=2",
                 "train.trackers=[]"]) == 0
    assert (run / "pytorch_lora_weights.safetensors").exists()


def from_done(progress: dict) -> set[int]:
    return {i for a, b in progress["done"] for i in range(a, b + 1)}


def test_a_pending_part_drawn_with_other_settings_is_refused(tmp_path, capsys):
    from diffalign.feedback.pending_parts import write_part

    out = tmp_path / "pairs"
    assert _pairs(tmp_path, out, "--max-prompts", "1") == 0
    settings = json.loads((out / "progress.json").read_text())["settings"]
    rows = {"caption": [], "jpg_0": [], "jpg_1": [], "label_0": [], "label_1": []}
    write_part(out, 1, rows, {"prompts": 1}, {**settings, "k": 2})  # from a run with --k 2 into the same folder
    capsys.readouterr()
    assert _pairs(tmp_path, out) == 2  # refused before any model loads
    assert capsys.readouterr().err.splitlines()[0] == (
        f"diffalign pairs: error: {out}/.pending/prompt-00000001.part: a pending part drawn with other settings (k: 2 "
        "there, 3 now): use the same settings to resume, another output folder, or --overwrite to start over"
    )


def test_old_scorer_dtype_spellings_warn_and_act_as_the_new(capsys):
    from diffalign.cli.main import build_parser

    base = ["pairs", "--prompts", "demo", "--model", "m", "--out", "o"]
    args = build_parser().parse_args([*base, "--scorer-dtype", "fp16", "--dtype", "auto"])
    assert (args.scorer_dtype, args.dtype) == ("float16", "auto")
    assert "diffalign: deprecated: --scorer-dtype fp16 is now --scorer-dtype float16" in capsys.readouterr().err

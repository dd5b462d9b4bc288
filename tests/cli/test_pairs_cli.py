"""`diffalign pairs` and `diffalign relabel` end to end: schema, resumption, dataset card, flips, bad images, training."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from diffalign.cli.main import main
from diffalign.rewards import available_scorers, register_scorer

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "assets" / "tiny-sd")
PROMPTS = ["a red circle on a blue background", "a small green square on a white background",
           "a large yellow triangle on a black background", "a blue circle on a white background"]


if "test-brightness" not in available_scorers():
    @register_scorer("test-brightness")
    class Brightness:
        """Mean pixel value / 255: scores known in advance."""

        name = "test-brightness"
        scale = "mean pixel / 255"
        logit_scale = 10.0

        def __init__(self, device=None, dtype=None, batch_size=None) -> None:
            pass

        def score(self, images, prompts):
            return torch.tensor([np.asarray(im, dtype=np.float64).mean() / 255 for im in images])


def _pairs(tmp_path: Path, out: Path, *extra: str) -> int:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return main(["pairs", "--prompts", str(prompts), "--model", TINY, "--scorer", "shapes", "--k", "3", "--steps", "3",
                 "--shard-size", "2", "--out", str(out), "--no-progress", "--device", "cpu", *extra])


def test_pairs_resume_without_redoing_prompts_then_train_on_them(tmp_path, capsys):
    out = tmp_path / "pairs"
    assert _pairs(tmp_path, out, "--max-prompts", "2") == 0
    assert "2 prompt(s) done (2 in this run)" in capsys.readouterr().out
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
    assert _pairs(tmp_path, out, "--k", "2") == 2
    assert "k: 3 there, 2 now" in capsys.readouterr().err

    run = tmp_path / "run"
    assert main(["train", f"data.path={out}", f"train.output_dir={run}", "train.max_steps=2", "train.batch_size=2",
                 "train.trackers=[]"]) == 0
    assert (run / "pytorch_lora_weights.safetensors").exists()


def from_done(progress: dict) -> set[int]:
    return {i for a, b in progress["done"] for i in range(a, b + 1)}


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_relabel_counts_flips_keeps_scores_and_lists_bad_images(tmp_path, capsys):
    brightness = [(200, 100, 1.0), (50, 150, 1.0), (100, 100, 0.0), (10, 250, 0.5), (None, 30, 1.0)]
    rows = {"caption": [f"c{i}" for i in range(5)],
            "jpg_0": [b"not an image" if a is None else _png(a) for a, _, _ in brightness],
            "jpg_1": [_png(b) for _, b, _ in brightness],
            "label_0": [lab for *_, lab in brightness], "label_1": [1 - lab for *_, lab in brightness]}
    source = tmp_path / "src.parquet"
    pq.write_table(pa.table(rows), source)
    out = tmp_path / "relabelled"
    args = ["relabel", str(source), "--scorer", "test-brightness", "--flip", "--tie-tolerance", "0.01",
            "--shard-size", "2", "--out", str(out), "--no-progress"]
    assert main(args) == 1  # a row left out
    captured = capsys.readouterr()
    assert "row 4 jpg_0" in captured.err and "cannot decode" in captured.err
    assert ("4 pairs written, 1 left out (images that could not be scored); scorer verdict: 3 decided, 1 ties, "
            "1 flipped, 1 original ties decided; agreement with the original labels 50.0% (of 2 pairs decided by both)"
            ) in captured.out

    table = datasets.load_dataset(str(out), split="train")
    assert table["caption"] == ["c0", "c1", "c2", "c3"]
    assert table["label_0"] == [1.0, 0.0, 0.5, 0.0] and table["label_1"] == [0.0, 1.0, 0.5, 1.0]
    assert table["original_label_0"] == [1.0, 1.0, 0.0, 0.5]
    np.testing.assert_allclose(table["score_test-brightness_0"], [200 / 255, 50 / 255, 100 / 255, 10 / 255])
    assert table["score_0"] == table["score_test-brightness_0"]
    np.testing.assert_allclose(table["pref_prob_0"][0], 1 / (1 + np.exp(-10 * 100 / 255)))
    assert "left out" in (out / "README.md").read_text()

    # resumption: drop the last shard from the progress file, as if the run had stopped after the first two
    progress = json.loads((out / "progress.json").read_text())
    complete = {p.name: p.read_bytes() for p in (out / "data").iterdir()}
    progress["shards"] = progress["shards"][:2]
    (out / "progress.json").write_text(json.dumps(progress))
    assert main(args) == 1
    assert {p.name: p.read_bytes() for p in (out / "data").iterdir()} == complete
    assert "agreement with the original labels 50.0%" in capsys.readouterr().out

    kept = tmp_path / "kept"
    assert main(["relabel", str(source), "--scorer", "test-brightness", "--out", str(kept), "--no-progress"]) == 1
    assert "1 would flip" in capsys.readouterr().out
    assert datasets.load_dataset(str(kept), split="train")["label_0"] == [1.0, 1.0, 0.0, 0.5]
    shutil.rmtree(kept)

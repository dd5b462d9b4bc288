"""`diffalign relabel` (`feedback.relabel_dataset`): flips, ties, scores as columns, bad rows left out, resumption."""

from __future__ import annotations

import io
import json
import shutil

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from diffalign.cli.main import main
from diffalign.feedback.relabel_dataset import RelabelJob
from diffalign.rewards import available_scorers, register_scorer

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


def test_job_refuses_bad_choices_before_reading_anything(tmp_path):
    source = tmp_path / "src.parquet"
    pq.write_table(pa.table({"caption": ["c"], "jpg_0": [_png(1)], "jpg_1": [_png(2)], "label_0": [1.0],
                             "label_1": [0.0]}), source)
    with pytest.raises(ValueError, match="the source's own folder"):
        RelabelJob(source=str(source), out=tmp_path, scorers=["test-brightness"]).check()
    with pytest.raises(ValueError, match="unknown label mode 'flip'"):
        RelabelJob(source=str(source), out=tmp_path / "o", scorers=["test-brightness"], labels="flip").check()
    with pytest.raises(ValueError, match="--tie-tolerance must be >= 0"):
        RelabelJob(source=str(source), out=tmp_path / "o", scorers=["test-brightness"], tie_tolerance=-1).check()


def test_the_help_says_how_to_run_on_many_processes(capsys):
    with pytest.raises(SystemExit):
        main(["relabel", "--help"])
    assert "accelerate launch --num_processes N -m diffalign.cli.main relabel SOURCE --out OUT" in capsys.readouterr().out

"""The user's own scorer named by reference on the command line: `diffalign score` and `diffalign relabel` with
`--scorer path/to/file.py:NAME` or `package.module:NAME`, and what a wrong reference shows."""

from __future__ import annotations

import io
import json
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from diffalign.cli.main import main
from diffalign.evaluation.score_files import read_scorer_summaries, read_scores

SCORERS = '''
import numpy as np


def redness(images, prompts, weight=1.0):
    return [weight * float(np.asarray(image)[..., 0].mean()) / 255 for image in images]


class Brightness:
    scale = "mean pixel / 255"
    logit_scale = 10.0

    def __init__(self, device=None):
        self.device = device

    def score(self, images, prompts):
        return np.array([np.asarray(image, dtype=np.float64).mean() / 255 for image in images])


def column(images, prompts):
    return [[0.0] for _ in images]
'''
COLOURS = [(255, 0, 0), (102, 51, 0), (0, 0, 255)]


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current directory: my_scorers.py and a folder of three solid-colour images with their prompts."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd(), str(tmp_path))])
    (tmp_path / "my_scorers.py").write_text(SCORERS)
    images = tmp_path / "images"
    images.mkdir()
    lines = []
    for i, rgb in enumerate(COLOURS):
        Image.fromarray(np.full((8, 8, 3), rgb, np.uint8)).save(images / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "prompt": f"colour {i}"}))
    (images / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_score_with_a_function_and_a_class_from_a_file(workdir: Path, capsys):
    out = workdir / "scores.json"
    args = ["score", "images", "--scorer", "my_scorers.py:redness,my_scorers.py:Brightness", "--scorer-option",
            "my_scorers.py:redness.weight=2", "--device", "cpu", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    rows = read_scores(out)
    assert [r["my_scorers.py:redness"] for r in rows] == pytest.approx([2 * rgb[0] / 255 for rgb in COLOURS])
    assert [r["my_scorers.py:Brightness"] for r in rows] == pytest.approx([sum(rgb) / 3 / 255 for rgb in COLOURS])
    summaries = read_scorer_summaries(out)
    assert summaries["my_scorers.py:redness"]["scale"] == "user"
    assert summaries["my_scorers.py:Brightness"]["scale"] == "mean pixel / 255"
    assert "my_scorers.py:Brightness" in capsys.readouterr().out


def test_score_with_a_package_module(workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    package = workdir / "site" / "diffalign_test_cli_scorers"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "colour.py").write_text(textwrap.dedent('''
        def blueness(images, prompts):
            return [image.getpixel((0, 0))[2] / 255 for image in images]
        '''))
    monkeypatch.syspath_prepend(str(workdir / "site"))
    try:
        out = workdir / "scores.csv"
        assert main(["score", "images", "--scorer", "diffalign_test_cli_scorers.colour:blueness", "--out", str(out),
                     "--no-progress"]) == 0
        assert [r["diffalign_test_cli_scorers.colour:blueness"] for r in read_scores(out)] == [0.0, 0.0, 1.0]
    finally:
        for name in [n for n in sys.modules if n.startswith("diffalign_test_cli_scorers")]:
            del sys.modules[name]


def test_wrong_references_and_results_are_one_line_errors(workdir: Path, capsys):
    assert main(["score", "images", "--scorer", "shapes,my_scorer.py:redness", "--no-progress"]) == 2
    assert capsys.readouterr().err == (
        f"diffalign score: error: scorer reference 'my_scorer.py:redness': no file {workdir / 'my_scorer.py'} "
        f"(relative to the current directory {workdir})\n(set DIFFALIGN_DEBUG=1 for a traceback)\n")
    assert main(["score", "images", "--scorer", "my_scorers.py:Redness", "--no-progress"]) == 2
    assert ("diffalign score: error: scorer reference 'my_scorers.py:Redness': my_scorers.py has no 'Redness'; its "
            "public functions and classes: Brightness, column, redness\n") in capsys.readouterr().err
    assert main(["score", "images", "--scorer", "my_scorers.py:Brightness", "--scorer-option",
                 "my_scorers.py:Brightness.gamma=2", "--no-progress"]) == 2
    assert ("diffalign score: error: scorer 'my_scorers.py:Brightness' has no option 'gamma' (Brightness.__init__() "
            "got an unexpected keyword argument 'gamma')\n") in capsys.readouterr().err
    assert main(["score", "images", "--scorer", "my_scorers.py:column", "--batch-size", "1", "--no-progress"]) == 2
    assert ("diffalign score: error: scorer 'my_scorers.py:column' failed on all 1 images of the first batch, e.g. "
            f"{Path('images') / '0.png'}: my_scorers.py:column: returned scores of shape (1, 1) for 1 image, not one "
            "float per image (a list, NumPy array or tensor of 1 number); stopped before scoring the rest\n"
            ) in capsys.readouterr().err


def _png(rgb: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), rgb, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_relabel_with_a_class_from_a_file(workdir: Path, capsys):
    # the first image is brighter in row 0 and darker in row 1, whose label says it won: row 1 flips
    source = workdir / "pairs.parquet"
    pq.write_table(pa.table({"caption": ["a", "b"], "jpg_0": [_png((200, 200, 200)), _png((10, 10, 10))],
                             "jpg_1": [_png((20, 20, 20)), _png((90, 90, 90))], "label_0": [1.0, 1.0],
                             "label_1": [0.0, 0.0]}), source)
    out = workdir / "relabelled"
    assert main(["relabel", str(source), "--scorer", "my_scorers.py:Brightness", "--flip", "--out", str(out),
                 "--no-progress"]) == 0
    table = pq.read_table(out / "data").to_pydict()
    assert table["label_0"] == [1.0, 0.0] and table["original_label_0"] == [1.0, 1.0]
    np.testing.assert_allclose(table["score_0"], [200 / 255, 10 / 255])
    assert "1 flipped" in capsys.readouterr().out

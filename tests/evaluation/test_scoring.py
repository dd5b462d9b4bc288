import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffalign.data.image_inputs import InputError, check_prompts, collect_items
from diffalign.evaluation.score_files import (
    output_format,
    read_scorer_summaries,
    read_scores,
    write_scores,
)
from diffalign.evaluation.scoring import (
    build_scorers,
    parse_option_value,
    parse_scorer_options,
    score_items,
    split_scorer_names,
    summarize,
)
from diffalign.rewards import build_scorer
from diffalign.rewards.batch import ScorerFailure, score_in_batches
from diffalign.synthetic.domain import random_spec
from diffalign.synthetic.render import render


def save_render(path: Path, seed: int, size: int = 32) -> str:
    """Render a random shapes-world scene to `path` (resized to `size`); return its caption."""
    rng = random.Random(seed)
    spec = random_spec(rng)
    image = Image.fromarray(render(spec, rng)[0])
    if size != 32:
        image = image.resize((size, size), Image.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return spec.caption


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """a.png and sub/b.png in metadata.jsonl, c.png with a sidecar, a corrupt PNG, a PDF, a hidden file, a README."""
    root = tmp_path / "images"
    captions = {name: save_render(root / name, i) for i, name in enumerate(["a.png", "sub/b.png", "c.png"])}
    (root / "c.txt").write_text(captions["c.png"] + "\n")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but nothing after the signature")
    (root / "notes.pdf").write_bytes(b"%PDF-1.4")
    (root / ".DS_Store").write_bytes(b"\0\0")
    (root / "README.md").write_text("samples")
    lines = [
        {"file_name": "a.png", "prompt": captions["a.png"]},
        {"file_name": "sub/b.png", "prompt": captions["sub/b.png"]},
        {"file_name": "broken.png", "prompt": "a red circle on a blue background"},
        {"file_name": "gone.png", "prompt": "a red circle on a blue background"},
    ]
    (root / "metadata.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def test_folder_items_take_prompts_from_metadata_and_sidecars(folder: Path):
    items = {Path(item.file).name: item for item in collect_items([str(folder)])}
    assert set(items) == {"a.png", "b.png", "c.png", "broken.png", "gone.png", "notes.pdf"}
    assert items["a.png"].prompt.startswith("a ") and items["a.png"].error is None
    assert items["c.png"].prompt == (folder / "c.txt").read_text().strip()
    assert "not found (listed in" in items["gone.png"].error and "metadata.jsonl line 4" in items["gone.png"].error
    assert "not a supported image type ('.pdf')" in items["notes.pdf"].error
    assert items["broken.png"].error is None  # only found out when it is read
    with pytest.raises(ValueError, match="cannot read image"):
        items["broken.png"].load()
    assert items["a.png"].load().size == (32, 32)


def test_prompt_option_overrides_and_missing_prompts_are_explained(tmp_path: Path):
    save_render(tmp_path / "x.png", 0)
    save_render(tmp_path / "y.png", 1)
    with pytest.raises(InputError, match=r"--prompt TEXT.*\n.*x\.txt.*\n.*metadata\.jsonl"):
        check_prompts(collect_items([str(tmp_path / "x.png"), str(tmp_path / "y.png")]))
    items = collect_items([str(tmp_path)], prompt="")
    assert [item.prompt for item in items] == ["", ""]  # an explicit empty prompt is a prompt
    check_prompts(items)
    (tmp_path / "x.txt").write_text("a red circle on a blue background")
    items = collect_items([str(tmp_path)])
    check_prompts(items)  # one image has a prompt: the other is an error of its own
    assert items[0].error is None and "no prompt" in items[1].error
    with pytest.raises(InputError, match="no such file"):
        collect_items([str(tmp_path / "nope.png")])


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_metadata_file_input(tmp_path: Path, kind: str):
    captions = [save_render(tmp_path / f"{i}.png", i) for i in range(2)]
    rows = [{"file_name": f"{i}.png", "caption": c} for i, c in enumerate(captions)]
    if kind == "csv":
        meta = tmp_path / "meta.csv"
        meta.write_text("file_name,caption\n" + "".join(f"{r['file_name']},{r['caption']}\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        meta = tmp_path / "meta.parquet"
        pq.write_table(pa.Table.from_pylist(rows), meta)
    items = collect_items([str(meta)])
    assert [item.prompt for item in items] == captions
    assert [Path(item.file) for item in items] == [tmp_path / "0.png", tmp_path / "1.png"]


def test_malformed_metadata_names_file_and_line(tmp_path: Path):
    meta = tmp_path / "metadata.jsonl"
    meta.write_text('{"file_name": "a.png", "prompt": "x"}\n{not json\n')
    with pytest.raises(InputError, match=r"metadata\.jsonl line 2: not valid JSON"):
        collect_items([str(meta)])
    meta.write_text('{"image": "a.png", "prompt": "x"}\n')
    with pytest.raises(InputError, match="no file_name column"):
        collect_items([str(meta)])
    meta.write_text('{"file_name": "a.png", "label": "x"}\n')
    with pytest.raises(InputError, match="no prompt column"):
        collect_items([str(meta)])


def test_scorer_names_and_options():
    assert split_scorer_names(["pickscore,hpsv2.1", " clip ", "pickscore"]) == ["pickscore", "hpsv2.1", "clip"]
    options = parse_scorer_options(
        ["hpsv2.1.scale=100*cos", "hpsv2.checkpoint=/w/HPS_v2.pt", "pickscore.batch_size=8", "pickscore.model=/m"],
        ["hpsv2", "hpsv2.1", "pickscore"],
    )
    assert options == {
        "hpsv2.1": {"scale": "100*cos"},
        "hpsv2": {"checkpoint": "/w/HPS_v2.pt"},
        "pickscore": {"batch_size": 8, "model": "/m"},
    }
    assert [parse_option_value(v) for v in ("true", "None", "3", "0.5", "'7'", "fp16")] == [True, None, 3, 0.5, "7", "fp16"]
    with pytest.raises(ValueError, match="NAME.key=value"):
        parse_scorer_options(["clip.scale=cos"], ["pickscore"])
    with pytest.raises(ValueError, match="expected NAME.key=value"):
        parse_scorer_options(["pickscore.model"], ["pickscore"])


def test_build_scorers_errors_name_the_scorer_and_option():
    with pytest.raises(KeyError, match="did you mean 'shapes'"):
        build_scorers(["shapse"])
    with pytest.raises(ValueError, match="scorer 'shapes' has no option 'colour'"):
        build_scorers(["shapes"], {"shapes": {"colour": "red"}})
    (scorer,) = build_scorers(["shapes"], device="cpu", dtype="fp32", batch_size=4)
    assert scorer.name == "shapes"


class PickyScorer:
    """Scores by mean brightness; refuses prompts containing 'bad' and, like `shapes`, mixed sizes."""

    name = "picky"
    scale = "mean pixel in [0, 1]"
    logit_scale = 1.0

    def __init__(self) -> None:
        self.calls: list[int] = []

    def score(self, images, prompts):
        self.calls.append(len(images))
        if len({image.size for image in images}) > 1:
            raise ValueError("images of different sizes in one batch")
        if any("bad" in p for p in prompts):
            raise ValueError("cannot parse a bad prompt")
        return torch.tensor([np.asarray(image, dtype=np.float64).mean() / 255 for image in images])


def test_batch_scoring_isolates_failures_and_groups_sizes():
    sizes = [32, 64, 32, 48, 64, 32]
    images = [Image.new("RGB", (s, s), (10 * i, 0, 0)) for i, s in enumerate(sizes)]
    prompts = ["ok"] * 6
    prompts[3] = "bad"
    scorer = PickyScorer()
    result = score_in_batches(scorer, images, prompts)
    assert [tuple(f) for f in result.failures] == [(3, "picky: cannot parse a bad prompt", "picky")]
    values = result.values().numpy()
    expected = [10 * i / 255 / 3 for i in range(6)]
    assert np.allclose(np.delete(values, 3), np.delete(expected, 3)) and np.isnan(values[3])
    assert scorer.calls == [6, 3, 2, 1]  # the whole list, then one call per size: 32 px, 64 px, 48 px (the bad one)
    scorer.calls.clear()
    same_size = [images[0]] * 4
    result = score_in_batches(scorer, same_size, ["ok", "ok", "ok", "bad"])
    assert scorer.calls == [4, 2, 2, 1, 1]  # halved until the bad image is alone
    assert result.failed == [3]


def test_shapes_scores_mixed_sizes_like_single_images(tmp_path: Path):
    for i, size in enumerate([32, 64, 32, 96]):
        (tmp_path / f"{i}.txt").write_text(save_render(tmp_path / f"{i}.png", i, size))
    items = collect_items([str(tmp_path / f"{i}.png") for i in range(4)])
    shapes = build_scorer("shapes")
    run = score_items(items, [shapes], batch_size=4, progress=False)
    assert not run.failed
    single = [float(shapes.score([item.load()], [item.prompt])[0]) for item in items]
    assert np.allclose(run.scores["shapes"], single)


def test_score_items_stops_when_a_scorer_fails_on_the_whole_first_batch(tmp_path: Path):
    save_render(tmp_path / "x.png", 0)
    items = collect_items([str(tmp_path / "x.png")] * 5, prompt="bad")
    with pytest.raises(ScorerFailure, match="failed on all 2 images of the first batch"):
        score_items(items, [PickyScorer()], batch_size=2, progress=False)
    run = score_items(items[:2], [PickyScorer()], batch_size=2, progress=False)  # nothing left: just errors
    assert run.failed == [0, 1]


def test_interrupted_run_keeps_what_was_scored(tmp_path: Path):
    save_render(tmp_path / "x.png", 0)

    class Interrupting(PickyScorer):
        def score(self, images, prompts):
            if len(self.calls) == 1:
                raise KeyboardInterrupt
            return super().score(images, prompts)

    items = collect_items([str(tmp_path / "x.png")] * 4, prompt="ok")
    run = score_items(items, [Interrupting()], batch_size=2, progress=False)
    assert run.interrupted
    assert np.isfinite(run.scores["picky"][:2]).all() and run.failed == [2, 3]
    assert run.error_of(3) == "not scored: interrupted"


def test_summary_statistics():
    items = collect_items([], prompt="x")
    run = score_items(items, [PickyScorer()], progress=False)
    assert summarize(run)[0].n == 0 and np.isnan(summarize(run)[0].mean)
    run.items = [None] * 5  # type: ignore[list-item]
    run.scores["picky"] = np.array([1.0, 2.0, np.nan, 4.0, 8.0])
    (s,) = summarize(run)
    assert (s.n, s.failed, s.mean, s.median, s.min, s.max) == (4, 1, 3.75, 3.0, 1.0, 8.0)
    assert s.std == pytest.approx(np.std([1, 2, 4, 8], ddof=1)) and s.scale == "mean pixel in [0, 1]"


ROWS = [
    {"file": "a/1.png", "prompt": "a red circle, \"quoted\"", "pickscore": 21.123456789012345, "clip": 0.1, "error": None},
    {"file": "a/2.png", "prompt": "línea\nnueva", "pickscore": None, "clip": -3e-7, "error": "pickscore: out of memory"},
]
COLUMNS = ["file", "prompt", "pickscore", "clip", "error"]


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl", ".parquet"])
def test_score_files_round_trip(tmp_path: Path, suffix: str):
    summaries = {"pickscore": {"scale": "logit_scale*cos", "n": 1}, "clip": {"scale": "100*cos", "n": 2}}
    path = write_scores(tmp_path / "out" / f"scores{suffix}", COLUMNS, ROWS, summaries)
    assert read_scores(path) == ROWS
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary files left
    if suffix in (".json", ".parquet"):
        assert read_scorer_summaries(path) == summaries


def test_pair_table_rows_round_trip_with_row_column(tmp_path: Path):
    columns = ["file", "row", "image", "prompt", "shapes", "error"]
    rows = [{"file": "p.parquet", "row": 3, "image": "jpg_1", "prompt": "x", "shapes": 0.5, "error": None}]
    for suffix in (".csv", ".parquet"):
        assert read_scores(write_scores(tmp_path / f"s{suffix}", columns, rows)) == rows


def test_unknown_output_suffix():
    with pytest.raises(ValueError, match=r"'\.xlsx'.*\.csv, \.json, \.jsonl, \.parquet"):
        output_format("scores.xlsx")

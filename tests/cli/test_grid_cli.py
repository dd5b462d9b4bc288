"""`diffalign grid`: side-by-side pages of `diffalign generate` folders."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from diffalign.cli.grid import parse_indices
from diffalign.cli.main import main
from diffalign.evaluation.grid import comparison_grid


def make_folder(folder, n_prompts=3, seeds=(0, 1), shade=0):
    """A `diffalign generate`-style folder of 32-px solid images; image (i, s) has colour (40 i, 100 + s, shade)."""
    folder.mkdir(parents=True)
    lines = []
    for i in range(n_prompts):
        for s in seeds:
            name = f"p{i:05d}-s{s}.png"
            Image.fromarray(np.full((32, 32, 3), (40 * i, 100 + s, shade), np.uint8)).save(folder / name)
            lines.append(json.dumps({"file_name": name, "prompt": f"a shape number {i}", "prompt_index": i,
                                     "seed": s, "category": None, "model": str(folder)}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "generation.json").write_text(json.dumps({"model": str(folder), "seeds": list(seeds)}))
    return folder


def layout_of(n_prompts, n_seeds, n_models, cell=None):
    return comparison_grid([""] * n_prompts, list(range(n_seeds)), [""] * n_models,
                           lambda *_: np.zeros((32, 32, 3), np.uint8), cell)[1]


def centre(grid, box):
    x0, y0, x1, y1 = box
    return tuple(grid[(y0 + y1) // 2, (x0 + x1) // 2])


def test_grid_of_two_folders(tmp_path, capsys):
    base, tuned = make_folder(tmp_path / "base"), make_folder(tmp_path / "tuned", shade=200)
    out = tmp_path / "grids" / "grid.png"
    assert main(["grid", str(base), str(tuned), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "models base, tuned" in printed
    grid = np.asarray(Image.open(out))
    layout = layout_of(3, 2, 2)
    assert grid.shape == (layout.height, layout.width, 3)
    for i in range(3):
        for s in range(2):
            assert centre(grid, layout.cell_box(i, s, 0)) == (40 * i, 100 + s, 0)
            assert centre(grid, layout.cell_box(i, s, 1)) == (40 * i, 100 + s, 200)


def test_pages_names_and_selection(tmp_path, capsys):
    a, b = make_folder(tmp_path / "run" / "gen"), make_folder(tmp_path / "other" / "gen", shade=9)
    out = tmp_path / "cmp.png"
    assert main(["grid", f"sd={a}", f"dpo={b}", "--out", str(out), "--per-page", "2"]) == 0
    printed = capsys.readouterr().out
    pages = [tmp_path / "cmp-01.png", tmp_path / "cmp-02.png"]
    assert all(p.is_file() and str(p) in printed for p in pages) and not out.exists()
    assert "models sd, dpo" in printed
    assert np.asarray(Image.open(pages[0])).shape[0] == layout_of(2, 2, 2).height
    assert np.asarray(Image.open(pages[1])).shape[0] == layout_of(1, 2, 2).height

    assert main(["grid", str(a), str(b), "--names", "base,tuned", "--prompts", "2,0", "--seeds", "1",
                 "--cell", "64", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "prompts 2..0, seeds [1], models base, tuned" in printed
    assert not any(p.exists() for p in pages) and "removed (a page of an earlier, longer grid)" in printed
    grid = np.asarray(Image.open(out))
    layout = layout_of(2, 1, 2, cell=64)
    assert grid.shape == (layout.height, layout.width, 3)
    assert centre(grid, layout.cell_box(0, 0, 1)) == (80, 101, 9) and centre(grid, layout.cell_box(1, 0, 0)) == (0, 101, 0)

    assert main(["grid", str(a), "--names", "only", "--max-prompts", "1", "--out", str(out)]) == 0
    assert np.asarray(Image.open(out)).shape == (layout_of(1, 2, 1).height, layout_of(1, 2, 1).width, 3)


@pytest.mark.parametrize("args, message", [
    (["{tmp}/absent"], "absent is not a folder"),
    (["{tmp}"], "no metadata.jsonl, so it is not a `diffalign generate` output"),
    (["{tmp}/a", "{tmp}/b"], r"no \(prompt, seed\) in common"),
    (["x={tmp}/a", "x={tmp}/a"], "two folders are named 'x'"),
    (["{tmp}/a", "--names", "p,q"], "--names gives 2 names for 1 folders"),
    (["{tmp}/a", "--prompts", "3-1"], "cannot read '3-1'"),
    (["{tmp}/a", "--prompts", "9"], r"no folder has an image of prompt\(s\) 9"),
])
def test_errors_exit_2_with_a_message(tmp_path, capsys, args, message):
    make_folder(tmp_path / "a", seeds=(0,))
    make_folder(tmp_path / "b", seeds=(1,))
    argv = ["grid", *(arg.format(tmp=tmp_path) for arg in args), "--out", str(tmp_path / "g.png")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "diffalign grid: error:" in err
    assert re.search(message, err), err


def test_max_prompts_below_one_is_refused_as_it_parses(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["grid", str(tmp_path), "--max-prompts", "0", "--out", "g.png"])
    assert exit_.value.code == 2
    assert "diffalign grid: error: argument --max-prompts: must be at least 1, got 0" in capsys.readouterr().err


def test_the_old_prompts_and_seeds_spellings_warn_and_act_as_show_prompts_and_show_seeds(tmp_path, capsys):
    make_folder(tmp_path / "a", seeds=(0, 1))
    new = ["grid", str(tmp_path / "a"), "--show-prompts", "2,0", "--show-seeds", "1", "--out", str(tmp_path / "n.png")]
    assert main(new) == 0
    captured = capsys.readouterr()
    assert "prompts 2..0, seeds [1]" in captured.out and "deprecated" not in captured.err
    old = ["grid", str(tmp_path / "a"), "--prompts", "2,0", "--seeds", "1", "--out", str(tmp_path / "o.png")]
    assert main(old) == 0
    captured = capsys.readouterr()
    assert "prompts 2..0, seeds [1]" in captured.out
    assert "diffalign: deprecated: --prompts is now --show-prompts" in captured.err
    assert "diffalign: deprecated: --seeds is now --show-seeds" in captured.err
    with pytest.raises(SystemExit):
        main(["grid", str(tmp_path / "a"), "--show-prompts", "0", "--max-prompts", "1", "--out", "g.png"])
    assert "argument --max-prompts: not allowed with argument --show-prompts" in capsys.readouterr().err


def test_an_output_that_is_a_folder_or_below_a_file_is_refused(tmp_path, capsys):
    base = make_folder(tmp_path / "base")
    (tmp_path / "file").write_text("x")
    assert main(["grid", str(base), "--out", str(tmp_path)]) == 2
    assert (f"diffalign grid: error: --out {tmp_path} is a folder: give the PNG file to write, e.g. "
            f"{tmp_path / 'grid.png'}") in capsys.readouterr().err
    out = tmp_path / "file" / "grid.png"
    assert main(["grid", str(base), "--out", str(out)]) == 2
    assert (f"diffalign grid: error: --out {out}: folder {tmp_path / 'file'} is a file, not a folder"
            in capsys.readouterr().err)


def test_prompts_and_max_prompts_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["grid", str(tmp_path), "--prompts", "0", "--max-prompts", "1", "--out", "g.png"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_help_explains_pages_and_gives_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["grid", "--help"])
    text = capsys.readouterr().out
    assert exit_.value.code == 0 and "usage: diffalign grid" in text
    assert "grid-01.png" in text and "examples:" in text and "NAME=" in text


def test_parse_indices():
    assert parse_indices("0-3,8") == [0, 1, 2, 3, 8]
    assert parse_indices("5, 1,5") == [5, 1]
    with pytest.raises(ValueError, match="cannot read 'x'"):
        parse_indices("1,x")

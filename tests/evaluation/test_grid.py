import json

import numpy as np
import pytest
from PIL import Image, ImageFont

from diffalign.evaluation.generated import read_generated
from diffalign.evaluation.grid import (
    MISSING_FILL,
    comparison_grid,
    grids_from_folders,
    save_png,
    wrap_text,
)


def colour(r: int, s: int, m: int) -> tuple[int, int, int]:
    """A distinct colour for each (row, seed, model), none of them white or the missing grey."""
    return (20 + 60 * r, 20 + 60 * s, 20 + 60 * m)


def solid(rgb, size=32):
    return np.full((size, size, 3), rgb, np.uint8)


def centre(grid: np.ndarray, box) -> tuple[int, ...]:
    x0, y0, x1, y1 = box
    return tuple(grid[(y0 + y1) // 2, (x0 + x1) // 2])


def has_ink(grid: np.ndarray, box) -> bool:
    x0, y0, x1, y1 = box
    return bool((grid[y0:y1, x0:x1] < 200).any())


def write_folder(folder, prompts: dict[int, str], seeds, skip=()):
    """A generation folder whose image (i, s) is a solid colour coding (i, s); `skip` lists (i, s) left out."""
    folder.mkdir(parents=True)
    with (folder / "metadata.jsonl").open("w") as out:
        for i, text in prompts.items():
            for s in seeds:
                if (i, s) in skip:
                    continue
                name = f"p{i:05d}-s{s}.png"
                Image.fromarray(solid((10 * i, 100 + s, 7))).save(folder / name)
                out.write(json.dumps({"file_name": name, "prompt": text, "prompt_index": i, "seed": s}) + "\n")
    return read_generated(folder)


def test_rows_are_prompts_columns_seed_groups_with_models_side_by_side():
    prompts, seeds, models = ["a cat", "a dog", "a cow"], [0, 7], ["base", "tuned", "other"]
    image, layout = comparison_grid(prompts, seeds, models, lambda r, s, m: solid(colour(r, s, m)))
    grid = np.asarray(image)
    assert grid.shape == (layout.height, layout.width, 3)
    assert layout.cell == 128  # 32-px images are shown at 128 px
    for r in range(3):
        for s in range(2):
            for m in range(3):
                x0, y0, x1, y1 = box = layout.cell_box(r, s, m)
                assert (x1 - x0, y1 - y0) == (128, 128) and x1 <= layout.width and y1 <= layout.height
                assert centre(grid, box) == colour(r, s, m)
                assert (grid[y0:y1, x0:x1] == colour(r, s, m)).all()  # the whole cell: nothing overlaps it
    # left to right: seed 0's models, then seed 7's; the gap between seed groups is wider than between models
    xs = [layout.cell_box(0, s, m)[0] for s in range(2) for m in range(3)]
    assert xs == sorted(xs)
    model_gap = layout.cell_box(0, 0, 1)[0] - layout.cell_box(0, 0, 0)[2]
    group_gap = layout.cell_box(0, 1, 0)[0] - layout.cell_box(0, 0, 2)[2]
    assert group_gap > model_gap > 0
    assert layout.cell_box(1, 0, 0)[1] > layout.cell_box(0, 0, 0)[3]  # rows top to bottom
    # captions: every prompt band, seed label and model label has text on it; the gaps stay white
    for r in range(3):
        assert has_ink(grid, layout.prompt_box(r))
        assert layout.prompt_box(r)[2] <= layout.cell_box(r, 0, 0)[0]  # the band is left of the images
    for s in range(2):
        assert has_ink(grid, layout.seed_header_box(s))
        header = layout.seed_header_box(s)
        assert header[0] == layout.cell_box(0, s, 0)[0] and header[2] == layout.cell_box(0, s, 2)[2]
        for m in range(3):
            assert has_ink(grid, layout.model_header_box(s, m))
            assert layout.model_header_box(s, m)[3] <= layout.cell_box(0, s, m)[1]
    x = layout.cell_box(0, 0, 0)[2]
    assert (grid[layout.cell_box(0, 0, 0)[1]:layout.cell_box(2, 0, 0)[3], x] == 255).all()


def test_small_images_are_upscaled_nearest_and_cell_sets_the_size():
    checker = np.zeros((32, 32, 3), np.uint8)
    checker[::2, ::2] = checker[1::2, 1::2] = 255
    image, layout = comparison_grid(["p"], [0], ["m"], lambda *_: checker)
    x0, y0, x1, y1 = layout.cell_box(0, 0, 0)
    cell = np.asarray(image)[y0:y1, x0:x1]
    assert np.array_equal(cell, checker.repeat(4, 0).repeat(4, 1))  # crisp 4x4 blocks, no blur

    big = solid((50, 60, 70), size=300)
    image, layout = comparison_grid(["p"], [0], ["m"], lambda *_: big)
    assert layout.cell == 300  # larger than 128: the native size is kept
    image, layout = comparison_grid(["p"], [0], ["m"], lambda *_: big, cell=64)
    assert layout.cell == 64 and centre(np.asarray(image), layout.cell_box(0, 0, 0)) == (50, 60, 70)


def test_non_square_float_and_pil_images_are_accepted():
    wide = np.full((16, 32, 3), 0.5, np.float32)
    pil = Image.new("RGBA", (32, 32), (9, 8, 7, 255))
    image, layout = comparison_grid(["p"], [0], ["a", "b"], lambda r, s, m: wide if m == 0 else pil)
    grid = np.asarray(image)
    x0, y0, x1, _ = layout.cell_box(0, 0, 0)
    assert centre(grid, layout.cell_box(0, 0, 0)) == (128, 128, 128)
    assert tuple(grid[y0 + 2, (x0 + x1) // 2]) == (255, 255, 255)  # 2:1 image, centred, white above
    assert centre(grid, layout.cell_box(0, 0, 1)) == (9, 8, 7)
    with pytest.raises(ValueError, match=r"shape \(4, 4, 2\)"):
        comparison_grid(["p"], [0], ["a"], lambda *_: np.zeros((4, 4, 2), np.uint8))


def test_a_missing_cell_is_grey_and_says_so():
    image, layout = comparison_grid(["a cat"], [0, 1], ["base", "tuned"],
                                    lambda r, s, m: None if (s, m) == (1, 1) else solid(colour(r, s, m)))
    grid = np.asarray(image)
    x0, y0, x1, y1 = layout.cell_box(0, 1, 1)
    assert tuple(grid[y0 + 2, x0 + 2]) == MISSING_FILL and tuple(grid[y1 - 3, x1 - 3]) == MISSING_FILL
    assert (grid[y0:y1, x0:x1] < 150).any()  # the word "missing"
    assert centre(grid, layout.cell_box(0, 1, 0)) == colour(0, 1, 0)


def test_long_prompts_are_wrapped_and_cut_with_an_ellipsis():
    font = ImageFont.load_default()
    lines = wrap_text("a red circle on a blue background " * 20, font, 120, max_lines=3)
    assert len(lines) == 3 and lines[-1].endswith("...")
    assert all(font.getlength(line) <= 120 for line in lines)
    assert wrap_text("short", font, 120, 3) == ["short"]
    assert wrap_text("x" * 200, font, 50, 10)[0] != "x" * 200  # an overlong word is split
    image, layout = comparison_grid(["word " * 500, "ünïcödé 猫 — prompt"], [0], ["m"], lambda *_: solid((1, 2, 3)))
    grid = np.asarray(image)
    assert has_ink(grid, layout.prompt_box(0)) and has_ink(grid, layout.prompt_box(1))


def test_empty_inputs_are_refused():
    with pytest.raises(ValueError, match="needs prompts, seeds and models"):
        comparison_grid([], [0], ["m"], lambda *_: None)


def test_folders_are_matched_by_prompt_and_seed_and_paged(tmp_path):
    prompts = {i: f"prompt {i}" for i in range(5)}
    base = write_folder(tmp_path / "base", prompts, [0, 1, 2])
    tuned = write_folder(tmp_path / "tuned", {**prompts, 5: "prompt 5"}, [0, 1], skip={(3, 1)})
    pages = grids_from_folders({"base": base, "tuned": tuned}, per_page=2)
    assert [info for _, info in pages] == [
        {"prompts": [0, 1], "seeds": [0, 1], "models": ["base", "tuned"]},
        {"prompts": [2, 3], "seeds": [0, 1], "models": ["base", "tuned"]},
        {"prompts": [4], "seeds": [0, 1], "models": ["base", "tuned"]},
    ]  # the prompts and seeds both folders have
    image, info = pages[1]
    _, layout = comparison_grid(["x", "y"], [0, 1], ["base", "tuned"], lambda *_: solid((0, 0, 0)))
    grid = np.asarray(image)
    assert grid.shape == (layout.height, layout.width, 3)
    for r, i in enumerate(info["prompts"]):
        for s in (0, 1):
            assert centre(grid, layout.cell_box(r, s, 0)) == (10 * i, 100 + s, 7)
            if (i, s) != (3, 1):
                assert centre(grid, layout.cell_box(r, s, 1)) == (10 * i, 100 + s, 7)
    x0, y0, _, _ = layout.cell_box(1, 1, 1)  # tuned has no (3, 1)
    assert tuple(grid[y0 + 2, x0 + 2]) == MISSING_FILL

    (page,) = grids_from_folders({"base": base, "tuned": tuned}, prompt_indices=[5, 0], seeds=[2])
    assert page[1] == {"prompts": [5, 0], "seeds": [2], "models": ["base", "tuned"]}


def test_folders_from_different_prompt_sets_are_refused(tmp_path):
    a = write_folder(tmp_path / "a", {0: "a cat", 1: "a dog"}, [0])
    b = write_folder(tmp_path / "b", {0: "a cat", 1: "a bird"}, [0])
    with pytest.raises(ValueError, match=r"'a' \(.*a\) and 'b' \(.*b\) disagree on prompt 1: 'a dog' vs 'a bird'"):
        grids_from_folders({"a": a, "b": b})


def test_unknown_or_disjoint_selections_are_refused(tmp_path):
    a = write_folder(tmp_path / "a", {0: "a cat"}, [0])
    b = write_folder(tmp_path / "b", {1: "a dog"}, [1])
    with pytest.raises(ValueError, match=r"no \(prompt, seed\) in common; a \(.*\): 1 prompts, seeds \[0\]"):
        grids_from_folders({"a": a, "b": b})
    with pytest.raises(ValueError, match=r"no folder has an image of prompt\(s\) 7"):
        grids_from_folders({"a": a, "b": b}, prompt_indices=[0, 7], seeds=[0])
    with pytest.raises(ValueError, match=r"no folder has an image with seed\(s\) 3"):
        grids_from_folders({"a": a, "b": b}, prompt_indices=[0], seeds=[3])
    with pytest.raises(ValueError, match="no images for prompts 1 and seeds 0"):
        grids_from_folders({"a": a, "b": b}, prompt_indices=[1], seeds=[0])
    with pytest.raises(ValueError, match="per_page"):
        grids_from_folders({"a": a}, per_page=0)


def test_an_unreadable_image_is_named(tmp_path):
    a = write_folder(tmp_path / "a", {0: "a cat"}, [0])
    a.get(0, 0).file.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"p00000-s0.png: cannot read the image"):
        grids_from_folders({"a": a})


def test_save_png_replaces_atomically(tmp_path):
    path = tmp_path / "out" / "grid.png"
    save_png(Image.new("RGB", (3, 2), (1, 2, 3)), path)
    save_png(np.full((2, 3, 3), 9, np.uint8), path)
    assert np.asarray(Image.open(path)).tolist() == np.full((2, 3, 3), 9).tolist()
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]  # no temporary file left


def test_the_bitmap_fallback_font_takes_any_text():
    load = getattr(ImageFont, "load_default_imagefont", None)
    if load is None:
        pytest.skip("Pillow < 10.1")
    lines = wrap_text("ünïcödé 猫 — a prompt", load(), 200, 2)
    assert lines and "?" in "".join(lines)  # characters beyond Latin-1 replaced, not an error

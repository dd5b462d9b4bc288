"""Captioned comparison grids: one row per prompt, the models side by side for each seed.

Columns are grouped by seed (a wider gap between groups); inside a group the models stand in the
order given (base | tuned | ...). A header band names each seed over its group and each model over
its column; a left band holds the prompt, wrapped. Small images are upscaled with NEAREST so the
pixels of a 32-px tiny-model image stay visible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from ..config.options import MISSING, max_prompts_option, option, out_option
from ..files import atomic_write
from .generated import GeneratedFolder

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), x1 and y1 exclusive
CellImage = Image.Image | np.ndarray | None

MIN_CELL = 128


@dataclass(kw_only=True)
class GridOptions:
    """The options of `diffalign grid`: the folders and their names, which prompts and seeds, the page layout,
    and the PNG to write. The prompts and seeds to show are indices into the folders (`--show-prompts`,
    `--show-seeds`), not the prompt sets and seed counts that `--prompts` and `--seeds` name elsewhere."""

    folders: list[str] = option(MISSING, "`diffalign generate` output folders; each model is named by its folder "
                                "name unless NAME= or --names says otherwise", positional=True, nargs="+",
                                metavar="[NAME=]FOLDER")
    out: Path = out_option("PNG to write (several pages: STEM-01.png, STEM-02.png ... beside it)")
    names: str | None = option(None, "model names, one per folder in order (e.g. base,tuned)", metavar="NAME[,NAME...]")
    show_prompts: str | None = option(None, "prompt indices to show, e.g. 0-7 or 0,3,5 or 0-3,8 (default: all the "
                                      "folders share)", metavar="LIST", old=("--prompts",))
    max_prompts: int | None = max_prompts_option("the first N prompts the folders share")
    show_seeds: str | None = option(None, "seeds to show, e.g. 0,1 or 0-2 (default: all the folders share)",
                                    metavar="LIST", old=("--seeds",))
    per_page: int = option(8, "prompt rows per page", min=1)
    cell: int | None = option(None, "cell size in pixels (default: the images' size, at least 128)", metavar="PX")
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
MISSING_FILL = (190, 190, 190)
MISSING_TEXT = (80, 80, 80)
RULE = (160, 160, 160)
ELLIPSIS = "..."  # the bitmap fallback font has no U+2026


@dataclass
class GridLayout:
    """Where everything of a comparison grid lies, in pixels: cells, prompt bands and header labels."""

    width: int
    height: int
    cell: int
    font_size: int
    cell_x: list[list[int]]  # [seed_col][model_col] -> left edge of the column
    row_y: list[int]  # [row] -> top edge of the row
    prompt_boxes: list[Box]  # [row]
    seed_boxes: list[Box]  # [seed_col]: the seed's label over its group
    model_boxes: list[list[Box]]  # [seed_col][model_col]: the model's label over its column

    def cell_box(self, row: int, seed_col: int, model_col: int) -> Box:
        """The box of the image of prompt row `row`, seed column `seed_col`, model `model_col`."""
        x, y = self.cell_x[seed_col][model_col], self.row_y[row]
        return (x, y, x + self.cell, y + self.cell)

    def prompt_box(self, row: int) -> Box:
        """The box the prompt text of row `row` is drawn in (the left band, beside the row)."""
        return self.prompt_boxes[row]

    def seed_header_box(self, seed_col: int) -> Box:
        """The box of the label naming seed column `seed_col`, spanning its models."""
        return self.seed_boxes[seed_col]

    def model_header_box(self, seed_col: int, model_col: int) -> Box:
        """The box of the label naming model `model_col` over its column in seed group `seed_col`."""
        return self.model_boxes[seed_col][model_col]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _drawable(text: str, font) -> str:
    """`text` with the characters the font cannot encode replaced (the bitmap font is Latin-1 only)."""
    try:
        font.getlength(text)
        return text
    except UnicodeEncodeError:
        return text.encode("latin-1", "replace").decode("latin-1")


def _fit(text: str, font, width: int, cut: bool = False) -> str:
    """`text`, cut and ended with an ellipsis if it is wider than `width` pixels (or if `cut`)."""
    if not cut and font.getlength(text) <= width:
        return text
    while text and font.getlength(text + ELLIPSIS) > width:
        text = text[:-1]
    return text.rstrip() + ELLIPSIS if text else ""


def wrap_text(text: str, font, width: int, max_lines: int) -> list[str]:
    """`text` broken into lines at most `width` px wide (words split only if too long); at most `max_lines`, the
    last ending in an ellipsis when text was cut."""
    lines: list[str] = []
    current = ""
    for word in _drawable(" ".join(text.split()), font).split(" "):
        candidate = f"{current} {word}" if current else word
        if font.getlength(candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while font.getlength(word) > width and len(word) > 1:  # a word wider than the band: split it
            cut = len(word) - 1
            while cut > 1 and font.getlength(word[:cut]) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _fit(lines[-1], font, width, cut=True)
    return lines


def _layout(n_rows: int, n_seeds: int, n_models: int, cell: int) -> GridLayout:
    font_size = min(max(cell // 9, 11), 28)
    line = round(font_size * 1.25)
    pad = max(2, font_size // 3)
    gap = max(2, cell // 64)
    group_gap = 4 * gap
    band = font_size * 14
    header = 2 * line + 2 * pad
    group_width = n_models * cell + (n_models - 1) * gap
    cell_x = [[band + s * (group_width + group_gap) + m * (cell + gap) for m in range(n_models)]
              for s in range(n_seeds)]
    row_y = [header + r * (cell + gap) for r in range(n_rows)]
    width = band + n_seeds * group_width + (n_seeds - 1) * group_gap + gap
    height = header + n_rows * (cell + gap)
    seed_boxes = [(xs[0], pad, xs[-1] + cell, pad + line) for xs in cell_x]
    model_boxes = [[(x, pad + line, x + cell, pad + 2 * line) for x in xs] for xs in cell_x]
    prompt_boxes = [(pad, y, band - pad, y + cell) for y in row_y]
    return GridLayout(width, height, cell, font_size, cell_x, row_y, prompt_boxes, seed_boxes, model_boxes)


def _as_image(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"a grid cell needs an (H, W), (H, W, 3) or (H, W, 4) image, got shape {array.shape}")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating):
            array = np.round(np.clip(array, 0.0, 1.0) * 255)
        array = np.clip(array, 0, 255).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def _resized(image: Image.Image, cell: int) -> Image.Image:
    """`image` scaled so its longer side is `cell`: NEAREST up (pixels stay crisp), LANCZOS down."""
    w, h = image.size
    scale = cell / max(w, h)
    if scale == 1:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)


def _centered(draw: ImageDraw.ImageDraw, box: Box, text: str, font, fill) -> None:
    text = _fit(_drawable(text, font), font, box[2] - box[0])
    draw.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), text, fill=fill, font=font, anchor="mm")


def comparison_grid(
    prompts: Sequence[str],
    seeds: Sequence[int],
    models: Sequence[str],
    image: Callable[[int, int, int], CellImage],
    cell: int | None = None,
) -> tuple[Image.Image, GridLayout]:
    """The captioned grid of `image(prompt_row, seed_col, model_col)` for every prompt, seed and model, and its layout.

    One row per prompt; columns grouped by seed, the models side by side inside each group. A cell
    whose image is None is grey and says "missing". Images are scaled to `cell` px on their longer
    side (default: the largest native size, at least 128 px).
    """
    if not prompts or not seeds or not models:
        raise ValueError(f"a grid needs prompts, seeds and models; got {len(prompts)} prompts, {len(seeds)} seeds, "
                         f"{len(models)} models")
    if cell is not None and cell < 1:
        raise ValueError(f"cell must be a positive number of pixels, got {cell}")
    images = {
        (r, s, m): (None if (x := image(r, s, m)) is None else _as_image(x))
        for r in range(len(prompts)) for s in range(len(seeds)) for m in range(len(models))
    }
    if cell is None:
        native = max((max(x.size) for x in images.values() if x is not None), default=MIN_CELL)
        cell = max(native, MIN_CELL)
    layout = _layout(len(prompts), len(seeds), len(models), cell)
    canvas = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(layout.font_size)
    line = round(layout.font_size * 1.25)

    for s, seed in enumerate(seeds):
        box = layout.seed_header_box(s)
        _centered(draw, box, f"seed {seed}", font, TEXT)
        draw.line([(box[0], box[3]), (box[2] - 1, box[3])], fill=RULE, width=1)
        for m, model in enumerate(models):
            _centered(draw, layout.model_header_box(s, m), model, font, TEXT)

    for r, prompt in enumerate(prompts):
        x0, y0, x1, y1 = layout.prompt_box(r)
        lines = wrap_text(prompt, font, x1 - x0, max(1, (y1 - y0) // line))
        for k, text in enumerate(lines):
            draw.text((x0, y0 + k * line), text, fill=TEXT, font=font)
        for s in range(len(seeds)):
            for m in range(len(models)):
                box = layout.cell_box(r, s, m)
                picture = images[(r, s, m)]
                if picture is None:
                    draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=MISSING_FILL)
                    _centered(draw, box, "missing", font, MISSING_TEXT)
                    continue
                picture = _resized(picture, cell)
                canvas.paste(picture, (box[0] + (cell - picture.width) // 2, box[1] + (cell - picture.height) // 2))
    return canvas, layout


def prompt_texts(folders: dict[str, GeneratedFolder]) -> dict[int, str]:
    """{prompt_index: prompt} over all folders; ValueError if two folders give one index different prompts."""
    texts: dict[int, tuple[str, str]] = {}
    for name, folder in folders.items():
        for index, text in folder.prompts():
            first = texts.setdefault(index, (name, text))
            if first[1] != text:
                raise ValueError(
                    f"folders {first[0]!r} ({folders[first[0]].folder}) and {name!r} ({folder.folder}) disagree on "
                    f"prompt {index}: {first[1]!r} vs {text!r}; they were generated from different prompt sets"
                )
    return {index: text for index, (_, text) in sorted(texts.items())}


def common_prompt_indices(folders: dict[str, GeneratedFolder]) -> list[int]:
    """The prompt indices every folder has an image of, ascending."""
    sets = [{index for index, _ in folder.prompts()} for folder in folders.values()]
    return sorted(set.intersection(*sets)) if sets else []


def common_seeds(folders: dict[str, GeneratedFolder]) -> list[int]:
    """The seeds every folder has an image of, ascending."""
    sets = [set(folder.seeds()) for folder in folders.values()]
    return sorted(set.intersection(*sets)) if sets else []


def _describe(folders: dict[str, GeneratedFolder]) -> str:
    return "; ".join(
        f"{name} ({folder.folder}): {len(folder.prompts())} prompts, seeds {folder.seeds()}"
        for name, folder in folders.items()
    )


def _some(values: list[int], shown: int = 10) -> str:
    return ", ".join(map(str, values[:shown])) + (f" ... ({len(values)} in all)" if len(values) > shown else "")


def _load(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{path}: cannot read the image ({error})") from None


def grids_from_folders(
    folders: dict[str, GeneratedFolder],
    prompt_indices: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    per_page: int = 8,
    cell: int | None = None,
) -> list[tuple[Image.Image, dict]]:
    """Comparison grids of generation folders (one model each, named by the keys), at most `per_page` prompts a page.

    Images are matched by (prompt_index, seed). By default: the prompts and seeds every folder has.
    Each page comes with {"prompts": [prompt indices], "seeds": [...], "models": [...]}.
    """
    if not folders:
        raise ValueError("no generation folders given")
    if per_page < 1:
        raise ValueError(f"per_page must be at least 1, got {per_page}")
    texts = prompt_texts(folders)
    if prompt_indices is None:
        prompt_indices = common_prompt_indices(folders)
    else:
        unknown = [i for i in prompt_indices if i not in texts]
        if unknown:
            raise ValueError(f"no folder has an image of prompt(s) {_some(unknown)}; {_describe(folders)}")
    if seeds is None:
        seeds = common_seeds(folders)
    else:
        present = {seed for folder in folders.values() for seed in folder.seeds()}
        unknown = [s for s in seeds if s not in present]
        if unknown:
            raise ValueError(f"no folder has an image with seed(s) {_some(unknown)}; {_describe(folders)}")
    if not prompt_indices or not seeds:
        raise ValueError(f"the folders have no (prompt, seed) in common; {_describe(folders)}")
    models = list(folders)
    items = list(folders.values())
    if not any(f.get(i, s) for f in items for i in prompt_indices for s in seeds):
        raise ValueError(f"no images for prompts {_some(list(prompt_indices))} and seeds {_some(list(seeds))}; "
                         f"{_describe(folders)}")

    pages = []
    for start in range(0, len(prompt_indices), per_page):
        rows = list(prompt_indices[start:start + per_page])

        def image(r: int, s: int, m: int, rows: list[int] = rows) -> Image.Image | None:
            found = items[m].get(rows[r], seeds[s])
            return None if found is None else _load(found.file)

        grid, _ = comparison_grid([f"[{i}] {texts[i]}" for i in rows], list(seeds), models, image, cell)
        pages.append((grid, {"prompts": rows, "seeds": list(seeds), "models": models}))
    return pages


def save_png(image: Image.Image | np.ndarray, path: str | Path) -> Path:
    """Write `image` as a PNG at `path` atomically (a temporary file next to it, then a rename)."""
    picture = image if isinstance(image, Image.Image) else _as_image(image)
    return atomic_write(path, lambda out: picture.save(out, format="PNG"))

"""`diffalign grid`: captioned side-by-side grids of `diffalign generate` folders (one model each)."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

from .options import add_options, job_values, when_used

INDEX_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def parse_indices(text: str) -> list[int]:
    """The non-negative integers of a list like `0-7`, `0,3,5` or `0-3,8` (ranges inclusive), in the order given."""
    indices: list[int] = []
    for part in text.split(","):
        match = INDEX_RANGE.fullmatch(part.strip())
        if match is None or (match[2] is not None and int(match[2]) < int(match[1])):
            raise ValueError(f"cannot read {part!r} in {text!r}: give numbers and ranges like 0-7 or 0,3,5")
        first = int(match[1])
        indices.extend(range(first, int(match[2] or first) + 1))
    return list(dict.fromkeys(indices))  # each once, first occurrence kept


def named_folders(items: list[str], names: str | None) -> dict[str, Path]:
    """{name: folder} from `FOLDER` or `NAME=FOLDER` arguments; `names` (comma-separated) overrides the names."""
    pairs = []
    for item in items:
        if "=" in item and not Path(item).is_dir():
            name, folder = item.split("=", 1)
            pairs.append((name, Path(folder)))
        else:
            pairs.append((Path(item).resolve().name, Path(item)))
    if names is not None:
        given = [n.strip() for n in names.split(",")]
        if len(given) != len(pairs):
            raise ValueError(f"--names gives {len(given)} names for {len(pairs)} folders")
        pairs = [(name, folder) for name, (_, folder) in zip(given, pairs)]
    out: dict[str, Path] = {}
    for name, folder in pairs:
        if not name:
            raise ValueError(f"empty model name for {folder}: write NAME=FOLDER or use --names")
        if name in out:
            raise ValueError(f"two folders are named {name!r} ({out[name]} and {folder}): name them with "
                             "--names base,tuned or NAME=FOLDER")
        out[name] = folder
    return out


def page_paths(out: Path, pages: int) -> list[Path]:
    """`out` itself for one page; otherwise STEM-01.SUFFIX, STEM-02.SUFFIX ... next to it."""
    if pages == 1:
        return [out]
    suffix = out.suffix or ".png"
    return [out.with_name(f"{out.stem}-{k:02d}{suffix}") for k in range(1, pages + 1)]


def stale_pages(out: Path, pages: int) -> list[Path]:
    """Pages STEM-NN beside `out` that an earlier run with more pages wrote and this run does not."""
    suffix = out.suffix or ".png"
    pattern = re.compile(rf"{re.escape(out.stem)}-(\d{{2,}}){re.escape(suffix)}")
    keep = set(page_paths(out, pages))
    return sorted(path for path in out.parent.glob(f"{out.stem}-*{suffix}")
                  if pattern.fullmatch(path.name) and path not in keep)


def check_png_path(out: Path) -> Path:
    """`out`, once sure a PNG can be written there: it is not a folder, and no folder on its path is a file."""
    from ..files import check_output_folder

    if out.is_dir():
        raise ValueError(f"--out {out} is a folder: give the PNG file to write, e.g. {out / 'grid.png'}")
    check_output_folder(out.parent, f"--out {out}: folder")
    return out


def cmd_grid(args: argparse.Namespace) -> int:
    """Read the folders, lay out their images as captioned grids, save the pages and print their paths."""
    from ..evaluation.generated import read_generated
    from ..evaluation.grid import GridOptions, common_prompt_indices, grids_from_folders, save_png

    options = GridOptions(**job_values(args, GridOptions))
    out = check_png_path(Path(options.out))
    folders = {name: read_generated(folder) for name, folder in named_folders(options.folders, options.names).items()}
    for name, folder in folders.items():
        if not folder.images:
            lost = f" ({folder.missing} listed in metadata.jsonl but missing)" if folder.missing else ""
            raise ValueError(f"{folder.folder} ({name}) has no images{lost}")
    prompts = parse_indices(options.show_prompts) if options.show_prompts else None
    if options.max_prompts is not None:
        prompts = common_prompt_indices(folders)[: options.max_prompts]
        if not prompts:
            raise ValueError("the folders have no prompt in common")
    seeds = parse_indices(options.show_seeds) if options.show_seeds else None
    pages = grids_from_folders(folders, prompts, seeds, per_page=options.per_page, cell=options.cell)
    for path, (image, info) in zip(page_paths(out, len(pages)), pages):
        save_png(image, path)
        print(f"{path}  (prompts {info['prompts'][0]}..{info['prompts'][-1]}, seeds {info['seeds']}, "
              f"models {', '.join(info['models'])})")
    for path in stale_pages(out, len(pages)):
        path.unlink()
        print(f"{path}  removed (a page of an earlier, longer grid)")
    return 0


def add_grid_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `grid` subcommand."""
    p = sub.add_parser(
        "grid",
        help="captioned side-by-side image grids of `diffalign generate` folders",
        description="Lay out the images of one or several `diffalign generate` folders (one model each) as a\n"
        "grid: one row per prompt, its text on the left; columns grouped by seed, and inside each seed the\n"
        "models side by side in the order given (base | tuned | ...). Images are matched across folders by\n"
        "(prompt index, seed); a cell without an image is grey. The folders must come from the same prompt set.\n"
        "By default: every prompt and seed that all folders have. Small images are upscaled (nearest\n"
        "neighbour) to at least 128 px.\n\n"
        "With more prompts than --per-page, the pages go to OUT-01.png, OUT-02.png ... next to --out\n"
        "(--out grid.png: grid-01.png, grid-02.png ...); with one page, to --out itself.",
        epilog="examples:\n"
        "  diffalign grid gen/base gen/tuned --out grid.png\n"
        "  diffalign grid base=gen/sd15 dpo=gen/sd15-dpo --out grids/parti.png --show-prompts 0-15 --show-seeds 0,1\n"
        "  diffalign grid gen/a gen/b gen/c --names base,round1,round2 --max-prompts 4 --cell 256 --out cmp.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    def options() -> None:
        from ..evaluation.grid import GridOptions

        # --show-prompts and --max-prompts pick the rows two ways: one or the other
        which = {"show_prompts", "max_prompts"}
        add_options(p, GridOptions, skip=which)
        add_options(p.add_mutually_exclusive_group(), GridOptions,
                    skip=[field.name for field in dataclasses.fields(GridOptions) if field.name not in which])

    when_used(p, options)
    p.set_defaults(func=cmd_grid)

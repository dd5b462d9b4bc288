"""The synthetic "shapes" world of the embedded tiny model: vocabulary, captions, scene specs.

A scene is one coloured shape on a plain background, 32x32 pixels. Its caption always names the
shape's colour, the shape and the background colour, and optionally its size and its position:

    "a red circle on a blue background"
    "a small yellow triangle on a black background, on the left"

The same module parses captions back into specs (the rule-based reward needs that), draws random
specs, and splits the caption space into training and held-out prompts deterministically.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass

IMAGE_SIZE = 32

PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.15, 0.15),
    "orange": (0.95, 0.55, 0.10),
    "yellow": (0.95, 0.90, 0.15),
    "green": (0.15, 0.70, 0.25),
    "blue": (0.15, 0.30, 0.90),
    "purple": (0.55, 0.20, 0.75),
    "white": (0.95, 0.95, 0.95),
    "black": (0.08, 0.08, 0.08),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}

# Half-extent of the shape's bounding box, in pixels of a 32x32 image.
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (3.5, 5.5), "large": (8.0, 10.5)}
ANY_SIZE_RANGE: tuple[float, float] = (3.5, 10.5)
MARGIN = 1.0  # the rendered shape keeps this many pixels from the image border

# Where the centre of the shape's bounding box lies for each position word: (x range, y range).
# The regions are at least 2 px apart on both axes, so that no placement is ambiguous.
POSITION_REGIONS: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "left": ((0.0, 12.0), (14.0, 18.0)),
    "right": ((20.0, 32.0), (14.0, 18.0)),
    "top": ((14.0, 18.0), (0.0, 12.0)),
    "bottom": ((14.0, 18.0), (20.0, 32.0)),
    "center": ((14.0, 18.0), (14.0, 18.0)),
}


class CaptionError(ValueError):
    """A caption that is not a sentence of the shapes world."""


@dataclass(frozen=True)
class SceneSpec:
    """What a caption asks for: colours and shape always, size and position when given."""

    colour: str
    shape: str
    background: str
    size: str | None = None
    position: str | None = None

    def __post_init__(self) -> None:
        if self.colour not in PALETTE or self.background not in PALETTE:
            raise CaptionError(f"unknown colour in {self}; colours are {', '.join(COLOURS)}")
        if self.colour == self.background:
            raise CaptionError(f"shape and background have the same colour in {self}")
        if self.shape not in SHAPES:
            raise CaptionError(f"unknown shape {self.shape!r}; shapes are {', '.join(SHAPES)}")
        if self.size is not None and self.size not in SIZES:
            raise CaptionError(f"unknown size {self.size!r}; sizes are {', '.join(SIZES)}")
        if self.position is not None and self.position not in POSITIONS:
            raise CaptionError(f"unknown position {self.position!r}; positions are {', '.join(POSITIONS)}")

    @property
    def caption(self) -> str:
        """The canonical caption of this spec."""
        size = f"{self.size} " if self.size else ""
        text = f"a {size}{self.colour} {self.shape} on a {self.background} background"
        if self.position:
            text += f", {POSITIONS[self.position]}"
        return text


_PHRASE_TO_POSITION = {phrase: name for name, phrase in POSITIONS.items()}


def parse_caption(caption: str) -> SceneSpec:
    """Parse a caption of the shapes world (case and surrounding spaces ignored) into its spec."""
    text = " ".join(caption.strip().lower().split())
    position = None
    if ", " in text:
        text, phrase = text.split(", ", 1)
        if phrase not in _PHRASE_TO_POSITION:
            raise CaptionError(
                f"cannot parse {caption!r}: unknown position phrase {phrase!r} "
                f"(expected one of {', '.join(repr(p) for p in POSITIONS.values())})"
            )
        position = _PHRASE_TO_POSITION[phrase]
    words = text.split(" ")
    # a [size] colour shape on a background background
    if len(words) not in (7, 8) or words[0] != "a" or words[-4:-2] != ["on", "a"] or words[-1] != "background":
        raise CaptionError(
            f"cannot parse {caption!r}: expected 'a [small|large] <colour> <shape> on a <colour> background"
            f"[, <position>]'"
        )
    size = words[1] if len(words) == 8 else None
    colour, shape, background = words[-6], words[-5], words[-2]
    return SceneSpec(colour=colour, shape=shape, background=background, size=size, position=position)


def all_specs() -> list[SceneSpec]:
    """Every spec of the world, in a fixed order (8*7 colour pairs x 3 shapes x 3 sizes x 6 positions)."""
    specs = []
    for colour, background, shape, size, position in itertools.product(
        COLOURS, COLOURS, SHAPES, (None, *SIZES), (None, *POSITIONS)
    ):
        if colour != background:
            specs.append(SceneSpec(colour, shape, background, size, position))
    return specs


def is_held_out(spec: SceneSpec, fraction: float = 0.15) -> bool:
    """Whether a caption belongs to the held-out evaluation prompts (a stable hash of the caption)."""
    digest = hashlib.sha256(spec.caption.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_specs(fraction: float = 0.15) -> tuple[list[SceneSpec], list[SceneSpec]]:
    """All specs split into (training, held-out) by `is_held_out`."""
    train, held_out = [], []
    for spec in all_specs():
        (held_out if is_held_out(spec, fraction) else train).append(spec)
    return train, held_out


def random_spec(rng: random.Random, p_size: float = 0.5, p_position: float = 0.5) -> SceneSpec:
    """Draw a spec: uniform colours (shape differs from background) and shape; size/position sometimes."""
    colour, background = rng.sample(COLOURS, 2)
    shape = rng.choice(SHAPES)
    size = rng.choice(SIZES) if rng.random() < p_size else None
    position = rng.choice(tuple(POSITIONS)) if rng.random() < p_position else None
    return SceneSpec(colour, shape, background, size, position)

"""The synthetic "shapes" world of the embedded tiny model: vocabulary, captions, scene specs.

A scene is one coloured shape, anywhere on a plain background, 32x32 pixels. Its caption always
names the shape's colour, the shape and the background colour, and optionally its size:

    "a red circle on a blue background"
    "a small yellow triangle on a black background"

(Position words were tried and dropped: a UNet has no positional encoding, and the tiny model did
not learn absolute positions within its CPU budget.)

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

# Half-extent of the shape's bounding box, in pixels of a 32x32 image.
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (3.5, 5.5), "large": (8.0, 10.5)}
ANY_SIZE_RANGE: tuple[float, float] = (3.5, 10.5)
MARGIN = 1.0  # the rendered shape keeps this many pixels from the image border

class CaptionError(ValueError):
    """A caption that is not a sentence of the shapes world."""


@dataclass(frozen=True)
class SceneSpec:
    """What a caption asks for: colours and shape always, size when given."""

    colour: str
    shape: str
    background: str
    size: str | None = None

    def __post_init__(self) -> None:
        if self.colour not in PALETTE or self.background not in PALETTE:
            raise CaptionError(f"unknown colour in {self}; colours are {', '.join(COLOURS)}")
        if self.colour == self.background:
            raise CaptionError(f"shape and background have the same colour in {self}")
        if self.shape not in SHAPES:
            raise CaptionError(f"unknown shape {self.shape!r}; shapes are {', '.join(SHAPES)}")
        if self.size is not None and self.size not in SIZES:
            raise CaptionError(f"unknown size {self.size!r}; sizes are {', '.join(SIZES)}")

    @property
    def caption(self) -> str:
        """The canonical caption of this spec."""
        size = f"{self.size} " if self.size else ""
        return f"a {size}{self.colour} {self.shape} on a {self.background} background"


def parse_caption(caption: str) -> SceneSpec:
    """Parse a caption of the shapes world (case and surrounding spaces ignored) into its spec."""
    words = " ".join(caption.strip().lower().split()).split(" ")
    # a [size] colour shape on a background background
    if len(words) not in (7, 8) or words[0] != "a" or words[-4:-2] != ["on", "a"] or words[-1] != "background":
        raise CaptionError(
            f"cannot parse {caption!r}: expected 'a [small|large] <colour> <shape> on a <colour> background'"
        )
    size = words[1] if len(words) == 8 else None
    colour, shape, background = words[-6], words[-5], words[-2]
    return SceneSpec(colour=colour, shape=shape, background=background, size=size)


def all_specs() -> list[SceneSpec]:
    """Every spec of the world, in a fixed order (8*7 colour pairs x 3 shapes x 3 sizes = 504)."""
    specs = []
    for colour, background, shape, size in itertools.product(COLOURS, COLOURS, SHAPES, (None, *SIZES)):
        if colour != background:
            specs.append(SceneSpec(colour, shape, background, size))
    return specs


def is_held_out(spec: SceneSpec, fraction: float = 0.2) -> bool:
    """Whether a caption belongs to the held-out evaluation prompts (a stable hash of the caption)."""
    digest = hashlib.sha256(spec.caption.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_specs(fraction: float = 0.2) -> tuple[list[SceneSpec], list[SceneSpec]]:
    """All specs split into (training, held-out) by `is_held_out`."""
    train, held_out = [], []
    for spec in all_specs():
        (held_out if is_held_out(spec, fraction) else train).append(spec)
    return train, held_out


def random_spec(rng: random.Random, p_size: float = 2 / 3) -> SceneSpec:
    """Draw a spec: uniform colours (shape differs from background) and shape; a size with prob. `p_size`."""
    colour, background = rng.sample(COLOURS, 2)
    shape = rng.choice(SHAPES)
    size = rng.choice(SIZES) if rng.random() < p_size else None
    return SceneSpec(colour, shape, background, size)

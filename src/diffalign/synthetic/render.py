"""Draw images of the shapes world: anti-aliased shapes on plain backgrounds, deterministic from a seed."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from .domain import (
    ANY_SIZE_RANGE,
    IMAGE_SIZE,
    MARGIN,
    PALETTE,
    SIZE_RANGES,
    SceneSpec,
)

SUPERSAMPLE = 4


@dataclass(frozen=True)
class Layout:
    """Where and how a shape was drawn: bounding-box centre and half-extent in pixels, global tint."""

    cx: float
    cy: float
    half: float
    tint: tuple[float, float, float]


def shape_coverage(shape: str, cx: float, cy: float, half: float, size: int, supersample: int = 1) -> np.ndarray:
    """Fraction of each pixel of a `size`x`size` image covered by the shape (supersampled), in [0, 1].

    Circle: radius `half`; square: side 2*half; triangle: apex at the top centre, base on the bottom
    edge of the bounding box. Coordinates are in pixels, (0, 0) is the top-left corner of the image.
    """
    n = size * supersample
    coords = (np.arange(n) + 0.5) / supersample
    x = coords[None, :]
    y = coords[:, None]
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= half**2
    elif shape == "square":
        inside = (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
    elif shape == "triangle":
        top, bottom = cy - half, cy + half
        # the half-width grows linearly from 0 at the apex to `half` at the base
        width = (y - top) / (2 * half) * half
        inside = (y >= top) & (y <= bottom) & (np.abs(x - cx) <= width)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    inside = inside.astype(np.float32)
    return inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))


def draw_layout(spec: SceneSpec, rng: random.Random) -> Layout:
    """Choose the shape's size (as the spec says, else at random), a random position and the image tint."""
    lo, hi = SIZE_RANGES[spec.size] if spec.size else ANY_SIZE_RANGE
    half = rng.uniform(lo, hi)
    low, high = half + MARGIN, IMAGE_SIZE - half - MARGIN
    cx, cy = rng.uniform(low, high), rng.uniform(low, high)
    tint = tuple(rng.uniform(-0.04, 0.04) for _ in range(3))
    return Layout(cx=cx, cy=cy, half=half, tint=tint)  # type: ignore[arg-type]


def render(spec: SceneSpec, rng: random.Random, layout: Layout | None = None) -> tuple[np.ndarray, Layout]:
    """Render a spec as a uint8 RGB array of shape (32, 32, 3); also return the layout used."""
    layout = layout or draw_layout(spec, rng)
    cover = shape_coverage(spec.shape, layout.cx, layout.cy, layout.half, IMAGE_SIZE, SUPERSAMPLE)[..., None]
    fg = np.asarray(PALETTE[spec.colour], dtype=np.float32)
    bg = np.asarray(PALETTE[spec.background], dtype=np.float32)
    image = cover * fg + (1 - cover) * bg + np.asarray(layout.tint, dtype=np.float32)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), layout

"""Rule-based reward of the embedded shapes world, judged from the pixels alone.

The caption is parsed into what it asks for (see `diffalign.synthetic.domain`), the image is measured
(background colour from the border, the shape as the pixels that differ from it), and every attribute
the caption names gets a graded score in [0, 1]:

* background / colour: `p(target | colour) * exp(-(d_target / 0.3)^2)`, where `d` is the RGB distance
  of the measured colour to each palette colour and `p` the softmax of `-d^2 / 0.15^2` over the
  palette (how surely the colour reads as the target, times how close it is);
* shape: `p(target) * IoU(target)`, with IoU between the shape's mask and each ideal shape drawn in
  its bounding box, and `p` the softmax of `IoU / 0.05` over the three shapes;
* size: `exp(-(d / 1.5)^2)`, `d` the distance (pixels) of the half-extent from the size's range.

The reward is the mean over the attributes the caption names, so two images rarely tie.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..synthetic.domain import (
    COLOURS,
    IMAGE_SIZE,
    PALETTE,
    SHAPES,
    SIZE_RANGES,
    SceneSpec,
    parse_caption,
)
from .base import ImageBatch, register_scorer, to_float_images

_PALETTE_ARRAY = np.asarray([PALETTE[name] for name in COLOURS], dtype=np.float64)
COLOUR_SIGMA = 0.15
COLOUR_WIDTH = 0.3
SHAPE_TEMPERATURE = 0.05
SIZE_WIDTH = 1.5
MIN_CONTRAST = 0.1  # below this RGB distance from the background there is no shape


@dataclass(frozen=True)
class Measurement:
    """What the pixels show: colours, the shape's mask, its bounding box (pixel edges)."""

    background: np.ndarray
    foreground: np.ndarray | None
    mask: np.ndarray
    bbox: tuple[float, float, float, float] | None  # x0, x1, y0, y1

    @property
    def half_extent(self) -> float:
        x0, x1, y0, y1 = self.bbox or (0, 0, 0, 0)
        return max(x1 - x0, y1 - y0) / 2


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask."""
    seen = np.zeros_like(mask)
    best: list[tuple[int, int]] = []
    height, width = mask.shape
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        component, queue = [], deque([start])
        seen[start] = True
        while queue:
            y, x = queue.popleft()
            component.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(component) > len(best):
            best = component
    out = np.zeros_like(mask)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def measure(image: np.ndarray) -> Measurement:
    """Measure a float RGB image (H, W, 3) in [0, 1] of the shapes world."""
    border = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])
    background = np.median(border, axis=0)
    dist = np.linalg.norm(image - background, axis=-1)
    if dist.max() < MIN_CONTRAST:
        return Measurement(background, None, np.zeros(dist.shape, bool), None)
    foreground = np.median(image[dist > 0.5 * dist.max()], axis=0)
    contrast = float(np.linalg.norm(foreground - background))
    mask = dist > 0.5 * max(contrast, MIN_CONTRAST)
    component = _largest_component(mask)
    if not component.any():
        return Measurement(background, foreground, mask, None)
    ys, xs = np.nonzero(component)
    bbox = (float(xs.min()), float(xs.max() + 1), float(ys.min()), float(ys.max() + 1))
    return Measurement(background, foreground, mask, bbox)


def colour_score(rgb: np.ndarray | None, target: str) -> float:
    """Graded agreement of a measured colour with a palette colour (see the module docstring)."""
    if rgb is None:
        return 0.0
    d = np.linalg.norm(_PALETTE_ARRAY - rgb, axis=-1)
    logits = -(d**2) / COLOUR_SIGMA**2
    p = np.exp(logits - logits.max())
    p /= p.sum()
    i = COLOURS.index(target)
    return float(p[i] * np.exp(-((d[i] / COLOUR_WIDTH) ** 2)))


def shape_templates(bbox: tuple[float, float, float, float], size: int = IMAGE_SIZE) -> dict[str, np.ndarray]:
    """Boolean masks of the ideal circle, square and triangle filling a bounding box (pixel centres)."""
    x0, x1, y0, y1 = bbox
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    c = np.arange(size) + 0.5
    x, y = c[None, :], c[:, None]
    in_box = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    return {
        "circle": ((x - cx) / hw) ** 2 + ((y - cy) / hh) ** 2 <= 1,
        "square": in_box,
        "triangle": in_box & (np.abs(x - cx) <= hw * (y - y0) / (y1 - y0)),
    }


def shape_ious(m: Measurement) -> dict[str, float]:
    """IoU of the measured shape mask with each ideal shape drawn in its bounding box."""
    if m.bbox is None:
        return {shape: 0.0 for shape in SHAPES}
    ious = {}
    for shape, template in shape_templates(m.bbox, m.mask.shape[0]).items():
        union = np.logical_or(m.mask, template).sum()
        ious[shape] = float(np.logical_and(m.mask, template).sum() / union) if union else 0.0
    return ious


def _interval_distance(value: float, lo: float, hi: float) -> float:
    return max(lo - value, 0.0, value - hi)


def attribute_scores(m: Measurement, spec: SceneSpec) -> dict[str, float]:
    """Graded score in [0, 1] of every attribute that the spec names."""
    scores = {"background": colour_score(m.background, spec.background), "colour": colour_score(m.foreground, spec.colour)}
    ious = shape_ious(m)
    logits = np.asarray([ious[s] for s in SHAPES]) / SHAPE_TEMPERATURE
    p = np.exp(logits - logits.max())
    p /= p.sum()
    scores["shape"] = float(p[SHAPES.index(spec.shape)] * ious[spec.shape]) if m.bbox else 0.0
    if spec.size:
        lo, hi = SIZE_RANGES[spec.size]
        d = _interval_distance(m.half_extent, lo - 0.5, hi + 0.5)
        scores["size"] = float(np.exp(-((d / SIZE_WIDTH) ** 2))) if m.bbox else 0.0
    return scores


def classify(m: Measurement) -> dict[str, str | None]:
    """The attributes the image shows: nearest palette colours, best-fitting shape, size."""

    def nearest(rgb: np.ndarray | None) -> str | None:
        return None if rgb is None else COLOURS[int(np.argmin(np.linalg.norm(_PALETTE_ARRAY - rgb, axis=-1)))]

    if m.bbox is None:
        return {"background": nearest(m.background), "colour": None, "shape": None, "size": None}
    ious = shape_ious(m)
    s_hi, l_lo = SIZE_RANGES["small"][1], SIZE_RANGES["large"][0]
    return {
        "background": nearest(m.background),
        "colour": nearest(m.foreground),
        "shape": max(ious, key=ious.get),  # type: ignore[arg-type]
        "size": "small" if m.half_extent < (s_hi + l_lo) / 2 else "large",
    }


def _to_images32(images: ImageBatch) -> np.ndarray:
    tensor = to_float_images(images).clamp(0, 1)
    if tensor.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        tensor = F.interpolate(tensor, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return tensor.permute(0, 2, 3, 1).double().numpy()


@register_scorer("shapes")
class ShapesReward:
    """The embedded default's scorer: how well an image of the shapes world meets its caption, in [0, 1]."""

    name = "shapes"
    scale = "mean attribute score in [0, 1]"
    # A convention, not a fit: a reward gap of 0.05 reads as a 73 % preference.
    logit_scale = 20.0

    def __init__(self, device: str | None = None, dtype: str | None = None, batch_size: int | None = None) -> None:
        # Pixel statistics on the CPU; device, dtype and batch size are accepted for a uniform scorer signature.
        del device, dtype, batch_size

    def details(self, images: ImageBatch, prompts: Sequence[str]) -> list[dict[str, float]]:
        """Per image, the graded score of every attribute its prompt names, and their mean as `reward`."""
        arrays = _to_images32(images)
        if len(arrays) != len(prompts):
            raise ValueError(f"{len(arrays)} images but {len(prompts)} prompts")
        out = []
        for array, prompt in zip(arrays, prompts):
            scores = attribute_scores(measure(array), parse_caption(prompt))
            scores["reward"] = float(np.mean(list(scores.values())))
            out.append(scores)
        return out

    def score(self, images: ImageBatch, prompts: Sequence[str]) -> torch.Tensor:
        """The reward of each image for its prompt, shape (N,), in [0, 1]."""
        return torch.tensor([d["reward"] for d in self.details(images, prompts)], dtype=torch.float32)

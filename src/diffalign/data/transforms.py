"""Image preprocessing for training: resize, crop (recorded for SDXL), flip, scale to [-1, 1]."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


@dataclass
class Prepared:
    """A training image in [-1, 1] (3, R, R) with SDXL's micro-conditioning inputs."""

    pixels: torch.Tensor
    original_size: tuple[int, int]  # (height, width) before resizing
    crop_top_left: tuple[int, int]  # (top, left) of the crop in the resized image


def prepare_image(
    image: Image.Image,
    resolution: int,
    random_crop: bool = False,
    random_flip: bool = False,
    generator: torch.Generator | None = None,
) -> Prepared:
    """Resize the shorter side to `resolution` (bicubic), crop a square (centre or random), maybe flip."""
    image = image.convert("RGB")
    width, height = image.size
    scale = resolution / min(width, height)
    new_w, new_h = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.BICUBIC)
    if random_crop:
        top = int(torch.randint(0, new_h - resolution + 1, (1,), generator=generator))
        left = int(torch.randint(0, new_w - resolution + 1, (1,), generator=generator))
    else:
        top, left = (new_h - resolution) // 2, (new_w - resolution) // 2
    array = np.asarray(image, dtype=np.uint8)[top : top + resolution, left : left + resolution]
    pixels = torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 127.5 - 1
    if random_flip and float(torch.rand((), generator=generator)) < 0.5:
        pixels = pixels.flip(-1)
    return Prepared(pixels, (height, width), (top, left))

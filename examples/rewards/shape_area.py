"""A deliberately partial reward for the reward-hacking demo (configs/demo/hacking.yaml): how much of the image the
shape covers, whatever the prompt asks for.

The shapes world's full reward (`shapes`) checks every attribute a caption names (background, colour, shape, size);
this one measures only the shape's area, so a policy trained on it learns to draw ever larger shapes: "a small red
circle" becomes a large blob, and once the blob reaches the border it is taken for the background. The training
reward rises while the full reward, watched by the reward-hacking monitor on held-out prompts, falls.

    diffalign train configs/demo/hacking.yaml      (rollout.reward=examples/rewards/shape_area.py:area)

Your own reward has the same form: a function `(images, prompts) -> one float per image` (PIL RGB images in,
higher is better), named as `path/to/file.py:NAME`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from diffalign.rewards.shapes import measure


def area(images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
    """The share of each image's pixels that differ from its background (its border's median colour), in [0, 1];
    the prompt is ignored, which is what makes this reward hackable."""
    del prompts
    return [float(measure(np.asarray(image, dtype=np.float64) / 255).mask.mean()) for image in images]

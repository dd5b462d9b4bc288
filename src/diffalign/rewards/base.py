"""The scorer interface and the registry that looks scorers up by name.

A scorer judges images against their prompts: `scorer.score(images, prompts)` returns one float per
image, higher is better. Every scorer of the toolkit (PickScore, HPS, CLIP score, the rule-based
reward of the embedded shapes world, ...) is registered under a name so that configs and the command
line can refer to it: `build_scorer("shapes")`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import Protocol, Union, runtime_checkable

import numpy as np
import torch
from PIL import Image

ImageBatch = Union[Sequence[Image.Image], torch.Tensor, np.ndarray]


@runtime_checkable
class Scorer(Protocol):
    """Anything with a name and `score(images, prompts) -> tensor of shape (N,)`."""

    name: str

    def score(self, images: ImageBatch, prompts: Sequence[str]) -> torch.Tensor:
        """Score each image against its prompt; higher is better."""
        ...


_REGISTRY: dict[str, Callable[..., Scorer]] = {}


def register_scorer(name: str) -> Callable[[Callable[..., Scorer]], Callable[..., Scorer]]:
    """Class or factory decorator: make a scorer available to `build_scorer(name, **kwargs)`."""

    def decorate(factory: Callable[..., Scorer]) -> Callable[..., Scorer]:
        if name in _REGISTRY:
            raise ValueError(f"a scorer named {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def available_scorers() -> list[str]:
    """Names of every registered scorer, sorted."""
    return sorted(_REGISTRY)


def build_scorer(name: str, **kwargs: object) -> Scorer:
    """Instantiate the scorer registered as `name`; unknown names get a did-you-mean error."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown scorer {name!r}{hint} Available: {', '.join(available_scorers())}")
    return _REGISTRY[name](**kwargs)


def to_float_images(images: ImageBatch) -> torch.Tensor:
    """Convert PIL images, uint8 arrays/tensors (HWC or CHW) or float tensors in [0, 1] to float (N, 3, H, W).

    Float tensors are taken as already in [0, 1] and (N, 3, H, W); uint8 input is divided by 255.
    """
    if isinstance(images, torch.Tensor):
        tensor = images.detach().cpu()
        if tensor.dim() == 3:
            tensor = tensor.unsqueeze(0)
        if tensor.dtype == torch.uint8:
            if tensor.shape[-1] == 3 and tensor.shape[1] != 3:
                tensor = tensor.permute(0, 3, 1, 2)
            return tensor.float() / 255
        return tensor.float()
    if isinstance(images, np.ndarray):
        array = images if images.ndim == 4 else images[None]
        if array.shape[-1] == 3:
            array = array.transpose(0, 3, 1, 2)
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        return tensor.float() / 255 if tensor.dtype == torch.uint8 else tensor.float()
    arrays = [np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images of different sizes in one batch: {sorted(shapes)}; resize them first")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255

"""The scorer interface and the registry that looks scorers up by name.

A scorer judges images against their prompts: `scorer.score(images, prompts)` returns one float per
image, higher is better. Every scorer of the toolkit (PickScore, HPS, CLIP score, the rule-based
reward of the embedded shapes world, ...) is registered under a name so that configs and the command
line can refer to it: `build_scorer("shapes")`.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, Union, runtime_checkable

import numpy as np
import torch
from PIL import Image

ImageBatch = Union[Sequence[Image.Image], torch.Tensor, np.ndarray]


@runtime_checkable
class Scorer(Protocol):
    """Anything with a name and `score(images, prompts) -> tensor of shape (N,)`.

    `scale` names the unit of the scores (for example "logit_scale*cos", "cos", "100*cos") so that
    reports never mix conventions; `logit_scale` is the factor that turns a difference of two scores
    into a Bradley-Terry logit, P(a > b) = sigmoid(logit_scale * (s_a - s_b)) (see
    `preference_probabilities`).
    """

    name: str
    scale: str
    logit_scale: float

    def score(self, images: ImageBatch, prompts: Sequence[str]) -> torch.Tensor:
        """Score each image against its prompt; higher is better."""
        ...


# name -> factory, or "module:attribute" for scorers whose module is imported on first use (their
# imports are heavy); importing the module runs its @register_scorer, which replaces the string.
_REGISTRY: dict[str, Callable[..., Scorer] | str] = {}


def register_scorer(name: str) -> Callable[[Callable[..., Scorer]], Callable[..., Scorer]]:
    """Class or factory decorator: make a scorer available to `build_scorer(name, **kwargs)`."""

    def decorate(factory: Callable[..., Scorer]) -> Callable[..., Scorer]:
        if callable(_REGISTRY.get(name)):
            raise ValueError(f"a scorer named {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def register_lazy(name: str, target: str) -> None:
    """Register `name` as the scorer `module:attribute`, imported only when `build_scorer(name)` is called."""
    _REGISTRY.setdefault(name, target)


def available_scorers() -> list[str]:
    """Names of every registered scorer, sorted."""
    return sorted(_REGISTRY)


REMOTE_PREFIX = "remote:"


def scorer_factory(name: str) -> Callable[..., Scorer]:
    """The class or factory that builds the scorer `name`: a registered name, `remote:http://HOST:PORT` (a scorer
    served by `diffalign serve-scorer`, `rewards.remote`), or a reference to the user's own scorer,
    `path/to/file.py:NAME` or `package.module:NAME` (`rewards.references`). Unknown names get a did-you-mean
    error."""
    if name not in _REGISTRY:
        if name.startswith(REMOTE_PREFIX):
            from .remote import remote_factory

            return remote_factory(name[len(REMOTE_PREFIX):])
        if ":" in name:
            from .references import reference_factory

            return reference_factory(name)
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown scorer {name!r}{hint} Available: {', '.join(available_scorers())}, or your own "
                       "as path/to/file.py:NAME, package.module:NAME or remote:http://127.0.0.1:PORT")
    entry = _REGISTRY[name]
    if isinstance(entry, str):
        module, attribute = entry.split(":")
        factory = getattr(importlib.import_module(module), attribute)
        _REGISTRY[name] = factory
        return factory
    return entry


def construct_scorer(name: str, factory: Callable[..., Scorer], kwargs: Mapping[str, object], hint: str = "") -> Scorer:
    """`factory(**kwargs)`, the scorer `name`; a constructor that fails (an option it does not take, missing weights,
    a bad option value...) becomes one ValueError naming the scorer, its options and the cause, with `hint` after
    the general case."""
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "no options"
    try:
        return factory(**kwargs)
    except TypeError as error:
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(error))
        if unexpected:
            raise ValueError(f"scorer {name!r} has no option {unexpected.group(1)!r} ({error})") from error
        raise ValueError(f"cannot build scorer {name!r} ({shown}): TypeError: {one_line(error)}{hint}") from error
    except Exception as error:  # noqa: BLE001  (the user's to fix: missing weights, a bad option value...)
        raise ValueError(f"cannot build scorer {name!r} ({shown}): {type(error).__name__}: {one_line(error)}{hint}"
                         ) from error


def one_line(error: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    return " ".join(str(error).split()) or type(error).__name__


def build_scorer(name: str, **kwargs: object) -> Scorer:
    """Instantiate the scorer registered as `name` with its options (device, dtype, batch_size, weights, ...)."""
    return scorer_factory(name)(**kwargs)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device`, or CUDA when it is available and CPU otherwise."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`dtype` by name ("fp32", "fp16", "bf16"), or fp16 on CUDA and fp32 elsewhere when it is None/"auto"."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of fp32, fp16, bf16")
    return _DTYPES[dtype]


def preference_probabilities(scores: torch.Tensor, logit_scale: float = 1.0) -> torch.Tensor:
    """P(candidate i is preferred) among the candidates of one prompt: softmax_i(logit_scale * s_i).

    This is PickScore's preference probability (Kirstain et al. 2023) when `scores` are its
    cosines and `logit_scale` is exp(the model's logit_scale); for two candidates it is the
    Bradley-Terry sigmoid(logit_scale * (s_0 - s_1)). The softmax runs over the last dimension, so a
    (prompts, candidates) tensor gives one distribution per prompt.
    """
    return torch.softmax(torch.as_tensor(scores, dtype=torch.float64) * logit_scale, dim=-1)


def to_pil_images(images: ImageBatch) -> list[Image.Image]:
    """PIL RGB images from PIL images (any mode, any sizes), uint8 arrays/tensors or float tensors in [0, 1], or a list of those."""
    if isinstance(images, (torch.Tensor, np.ndarray)):
        floats = to_float_images(images).clamp(0, 1)
        arrays = (floats * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return [Image.fromarray(a) for a in arrays]
    out = []
    for image in images:
        if isinstance(image, Image.Image):
            out.append(image if image.mode == "RGB" else image.convert("RGB"))
        else:
            out.extend(to_pil_images(image))  # one array or tensor image (HWC or CHW)
    return out


def to_uint8_tensors(images: ImageBatch) -> list[torch.Tensor]:
    """Each image as a uint8 (3, H, W) CPU tensor (any sizes): PIL images (any mode), uint8 arrays/tensors
    (HWC or CHW) or float tensors in [0, 1] (rounded as `to_pil_images` rounds them)."""
    if isinstance(images, (torch.Tensor, np.ndarray)):
        return list((to_float_images(images).clamp(0, 1) * 255).round().to(torch.uint8).unbind(0))
    out = []
    for image in images:
        if isinstance(image, Image.Image):
            array = np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
            out.append(torch.from_numpy(array.copy()).permute(2, 0, 1))
        else:
            out.extend(to_uint8_tensors(image))
    return out


def check_batch(images: Sequence[object], prompts: Sequence[str]) -> None:
    """Raise a clear error when images and prompts are not one-to-one."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, one per image, not a single string")
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts: give one prompt per image")


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

"""The training methods, one module each; `build_method(cfg.objective)` returns the one a run asked for.

Adding a method: see docs/adding-a-method.md and `base.py` for the capabilities it declares.
"""

from __future__ import annotations

import importlib

from ...config.objectives import ObjectiveConfig, method_path
from .base import Method, TrainableModel, pair_errors, sample_noise_and_timesteps


def method_class(name: str) -> type[Method]:
    """The method class registered for objective `name` (its module imported now)."""
    path = method_path(name)
    if isinstance(path, type):
        cls = path
    else:
        module_name, _, attribute = path.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise ImportError(f"objective {name!r}: its method {path!r} cannot be imported ({error})") from error
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"objective {name!r}: {path} is not a subclass of diffalign.training.methods.Method")
    return cls


def build_method(cfg: ObjectiveConfig) -> Method:
    """The method object for an objective config."""
    return method_class(cfg.name)(cfg)


__all__ = ["Method", "TrainableModel", "build_method", "method_class", "pair_errors", "sample_noise_and_timesteps"]

"""diffalign: align text-to-image diffusion models with human preferences.

The Python API (`diffalign.train`, `evaluate`, `score`, `load_config`, see `diffalign.api`) loads on first use,
so that `import diffalign` stays light (no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> the module that defines it; resolved by name on first access (not an import: see tests/test_layering.py)
API = {name: "diffalign.api" for name in ("load_config", "train", "evaluate", "score", "TrainResult", "EvalResult")}
__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    """The API function or class `name`, from the module that defines it."""
    if name not in API:
        raise AttributeError(f"module 'diffalign' has no attribute {name!r}")
    return getattr(importlib.import_module(API[name]), name)


def __dir__() -> list[str]:
    """The API and the module's own dunder names (not the helpers it imports)."""
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})

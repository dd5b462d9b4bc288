"""What the commands that take a training run (`eval`, `fuse`) read from its folder."""

from __future__ import annotations

from pathlib import Path


def base_model_of(run: Path, base: str | None) -> str:
    """`base` if given, else the `model.pretrained` of the run's `config.yaml` (a clear error without one)."""
    if base is not None:
        return base
    from ..config.core import load_config
    from ..config.schema import RunConfig

    config = run / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{config} not found: pass --base MODEL for a LoRA folder without a run config")
    return load_config(RunConfig, config).model.pretrained

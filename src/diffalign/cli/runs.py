"""What the commands that take a training run (`eval`, `fuse`) read from its folder."""

from __future__ import annotations

from pathlib import Path


def base_model_of(run: Path, base: str | None) -> str:
    """`base` if given, else the `model.pretrained` of the run's `config.yaml` (a clear error without one)."""
    if base is not None:
        return base
    from ..evaluation.model_specs import run_base_model

    pretrained = run_base_model(run)
    if pretrained is None:
        raise FileNotFoundError(f"{run / 'config.yaml'} not found: pass --base MODEL for a LoRA folder without a run config")
    return pretrained

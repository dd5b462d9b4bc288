"""Loaded tiny models of each family (shared, not to be modified) and a recorder of the UNet's timesteps."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from diffalign.config.schema import ModelConfig
from diffalign.models.loading import DiffusionParts, load_parts


@pytest.fixture(scope="session")
def tiny_parts(tiny_models):
    """tiny_parts(family) -> DiffusionParts of the tiny 'sd15', 'sd21-v' or 'sdxl' model, loaded once."""
    cache: dict[str, DiffusionParts] = {}

    def get(family: str) -> DiffusionParts:
        if family not in cache:
            cache[family] = load_parts(ModelConfig(pretrained=str(tiny_models[family])))
            cache[family].unet.eval()
        return cache[family]

    return get


@pytest.fixture
def record_calls():
    """record_calls(unet): a context manager yielding the list of the UNet's calls while it is open."""
    return recording_calls


@contextmanager
def recording_calls(unet: torch.nn.Module):
    """Record every UNet call as (timestep tensor, keyword arguments) while the block runs."""
    calls: list[tuple[torch.Tensor, dict]] = []

    def hook(module, args, kwargs):
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        calls.append((torch.as_tensor(timestep).detach().clone(), kwargs))

    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


@pytest.fixture(scope="session")
def demo_parts() -> DiffusionParts:
    """The embedded demo model (assets/tiny-sd: SD1.5-shaped, trained on the shapes world, 32 px images)."""
    parts = load_parts(ModelConfig(pretrained=str(Path(__file__).resolve().parents[2] / "assets" / "tiny-sd")))
    parts.unet.eval()
    return parts

"""No behaviour change: short demo runs give the per-step losses and weights recorded in `golden/`
(see `golden.py`: recorded from the code before the method-architecture refactor)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from .golden import GOLDEN, JOBS, run_job


@pytest.mark.parametrize("name", list(JOBS))
def test_recorded_losses_and_weights(name, tmp_path):
    losses, weights = run_job(name, tmp_path / name, tmp_path / "cache")
    recorded = json.loads((GOLDEN / f"{name}.json").read_text())["losses"]
    assert losses == pytest.approx(recorded, rel=1e-5, abs=1e-7)
    expected = load_file(str(GOLDEN / f"{name}.safetensors"))
    assert weights.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(weights[key], value, rtol=1e-5, atol=1e-7, msg=key)

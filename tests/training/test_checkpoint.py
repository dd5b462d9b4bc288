import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from diffalign.training.checkpoint import (
    checkpoint_dir,
    list_checkpoints,
    load_state_files,
    resolve_resume,
    rng_state,
    save_checkpoint,
    save_state_files,
    set_rng_state,
)

from ..permissions import modes, umask


def test_optimizer_state_round_trips_without_pickle(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.95))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_state_files(tmp_path, "optimizer", opt.state_dict())
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.bin"))
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=1.0)
    fresh.load_state_dict(load_state_files(tmp_path, "optimizer"))
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"][0]["betas"] == b["param_groups"][0]["betas"] == (0.8, 0.95)
    for k in a["state"]:
        for name, value in a["state"][k].items():
            assert torch.equal(value, b["state"][k][name])


def test_rng_state_round_trips(tmp_path):
    torch.manual_seed(1)
    np.random.seed(1)
    save_state_files(tmp_path, "rng", rng_state())
    expected = (torch.rand(3), np.random.rand(2))
    set_rng_state(load_state_files(tmp_path, "rng"))
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(2), expected[1])


def _save(out, step, keep=2, fail=False):
    def shared(folder):
        if fail:
            raise RuntimeError("disk full")
        (folder / "state.json").write_text(json.dumps({"step": step}))

    return save_checkpoint(out, step, shared, lambda folder: None, True, lambda: None, keep)


def test_checkpoints_are_atomic_pruned_and_found(tmp_path):
    for step in (2, 4, 6):
        _save(tmp_path, step)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004", "step-00000006"]
    with pytest.raises(RuntimeError):
        _save(tmp_path, 8, fail=True)  # a crash mid-save leaves no step-8 and keeps the others
    assert resolve_resume("latest", tmp_path) == checkpoint_dir(tmp_path, 6)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004", "step-00000006"]
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume("latest", tmp_path / "elsewhere") is None
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        resolve_resume(str(tmp_path), tmp_path)


def test_a_checkpoint_has_the_usual_permissions(tmp_path):
    def shared(folder):
        save_file({"w": torch.zeros(2)}, str(folder / "trainable.safetensors"))  # safetensors alone writes 0600
        (folder / "state.json").write_text(json.dumps({"step": 1}))

    with umask(0o022):
        saved = save_checkpoint(tmp_path, 1, shared, lambda folder: None, True, lambda: None, 2)
    assert modes(saved) == {"trainable.safetensors": 0o644, "state.json": 0o644}
    assert modes(tmp_path)["checkpoints/step-00000001"] == 0o755

"""Resuming means the same run: settings that change what a checkpoint's state means are refused with the list
of differences; those a resumed run can apply (the learning rate and its schedule, ...) are applied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler

from diffalign.config.core import dump_yaml, load_config
from diffalign.config.schema import RunConfig
from diffalign.training.checkpoint import checkpoint_dir
from diffalign.training.resume_rules import check_resume_config
from diffalign.training.state import TrainingState


def _checkpoint(folder: Path, cfg: RunConfig, step: int = 4) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(dump_yaml(cfg))
    (folder / "state.json").write_text(json.dumps({"step": step, "micro_step": step}))
    return folder


def _cfg(*overrides: str) -> RunConfig:
    return load_config(RunConfig, None, ["train.output_dir=runs/a", *overrides])


def test_bookkeeping_changes_pass_and_applied_ones_are_listed(tmp_path):
    saved = _checkpoint(tmp_path / "step-4", _cfg())
    same = _cfg("train.output_dir=runs/b", "train.resume=latest", "train.log_every=3", "train.checkpoint_every=7",
                "train.trackers=[]", "train.cpu_threads=1", "validation.every=0", "data.num_workers=2")
    assert check_resume_config(saved, same) == []
    applied = check_resume_config(saved, _cfg("train.learning_rate=1e-4", "train.max_steps=800", "objective.beta=500"))
    assert applied == ["objective.beta: 2000.0 → 500.0 (the loss at every step)",
                       "train.learning_rate: 0.001 → 0.0001 (the schedule's peak rate)",
                       "train.max_steps: 400 → 800 (the schedule's length)"]


def test_changes_that_alter_what_the_state_means_are_refused_with_the_list(tmp_path):
    saved = _checkpoint(tmp_path / "step-4", _cfg())
    changed = _cfg("train.seed=7", "train.grad_accum=2", "objective.name=kto", "train.adam_beta2=0.99",
                   "train.learning_rate=1e-4")
    with pytest.raises(ValueError) as caught:
        check_resume_config(saved, changed)
    message = str(caught.value)
    assert message.startswith(f"train.resume: {saved} was trained with other settings, which a resumed run cannot "
                              f"change: ")
    for listed in ("objective.name: dpo → kto", "train.seed: 0 → 7", "train.grad_accum: 1 → 2",
                   "train.adam_beta2: 0.999 → 0.99"):
        assert listed in message
    assert "learning_rate" not in message  # applied, so not among the refused
    assert "\n" not in message and f"its settings: {saved / 'config.yaml'}" in message
    with pytest.raises(ValueError, match=r"train.max_steps=3 is below the step of the checkpoint it resumes \(4"):
        check_resume_config(saved, _cfg("train.max_steps=3"))


def _state(lr: float, max_steps: int, accelerator: Accelerator) -> tuple[TrainingState, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=1, num_training_steps=max_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    return TrainingState(accelerator, model, optimizer, scheduler, False, "sd", 2, dump_yaml(_cfg())), optimizer


def _steps(state: TrainingState, optimizer, n: int) -> list[float]:
    """Rates of `n` optimizer steps (the rate each step used)."""
    used = []
    for _ in range(n):
        used.append(optimizer.param_groups[0]["lr"])
        state.unet(torch.ones(1, 3)).sum().backward()
        optimizer.step()
        state.lr_scheduler.step()
        optimizer.zero_grad()
    return used


def test_a_changed_learning_rate_and_length_apply_from_the_first_resumed_step(tmp_path):
    accelerator = Accelerator(cpu=True)
    state, optimizer = _state(1e-2, 8, accelerator)
    _steps(state, optimizer, 4)
    state.save(tmp_path, 4, 4, keep=1)

    # the rates of a run with the new settings from the start, at steps 5-8
    reference, ref_optimizer = _state(1e-3, 16, accelerator)
    expected = _steps(reference, ref_optimizer, 8)[4:]
    resumed, optimizer = _state(1e-3, 16, accelerator)
    assert resumed.restore(checkpoint_dir(tmp_path, 4)) == (4, 4)
    assert _steps(resumed, optimizer, 4) == pytest.approx(expected, rel=1e-12)

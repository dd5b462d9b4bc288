"""Which settings a resumed run may change, in one place.

A checkpoint holds the state of one run: weights and optimizer moments trained with its learning rate and
objective, the position in its data order, its random generators. Resuming it with other settings either
changes nothing that state means (bookkeeping, speed: `FREE`), or takes effect from the first resumed step
because the loop reads the value afresh (`APPLIED`, each with how), or would silently train something else
than the config says: every other key, which refuses the resume with the list of differences.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..config.core import dump_yaml
from ..config.schema import RunConfig
from .checkpoint import CONFIG_FILE, STATE_FILE

FREE = frozenset({
    "train.output_dir", "train.resume", "train.overwrite",
    "train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "train.trackers",
    "train.cpu", "train.cpu_threads", "train.gradient_checkpointing", "train.attention", "train.compile",
    "train.channels_last", "train.allow_tf32", "train.offload_reference",
    # pairs per process: the checkpoint's pairs per step over all processes must stay (TrainingState.restore)
    "train.batch_size",
    "data.num_workers", "data.cache", "data.cache_dir",
    "reference.precompute", "reference.precompute_batch",
})
FREE_SECTIONS = ("validation.",)  # the validation grid's prompts, seeds and cadence

APPLIED = {
    "train.max_steps": "the schedule's length",
    "train.learning_rate": "the schedule's peak rate",
    "train.scale_lr": "the schedule's peak rate",
    "train.lr_scheduler": "the schedule's shape",
    "train.warmup_steps": "the schedule's shape",
    "train.max_grad_norm": "clipping at every step",
    "train.mixed_precision": "the autocast of every step",
    "objective.beta": "the loss at every step",
}

_ABSENT = "(absent)"


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, current value) of every setting that differs between two config trees."""
    a, b = _flat(saved), _flat(current)
    return [(key, a.get(key, _ABSENT), b.get(key, _ABSENT)) for key in sorted(a.keys() | b.keys())
            if a.get(key, _ABSENT) != b.get(key, _ABSENT)]


def _free(key: str) -> bool:
    return key in FREE or key.startswith(FREE_SECTIONS)


def check_resume_config(checkpoint: Path, cfg: RunConfig) -> list[str]:
    """Compare the settings a checkpoint was written with to this run's: refuse (ValueError, listing every
    `key: checkpoint value -> new value` that a resume cannot change) or return the applied changes, described."""
    saved = yaml.safe_load((checkpoint / CONFIG_FILE).read_text())
    changed = [d for d in differences(saved, yaml.safe_load(dump_yaml(cfg))) if not _free(d[0])]
    refused = [d for d in changed if d[0] not in APPLIED]
    if refused:
        listed = "; ".join(f"{key}: {old} → {new}" for key, old, new in refused)
        raise ValueError(
            f"train.resume: {checkpoint} was trained with other settings, which a resumed run cannot change: {listed}. "
            f"Resume with the checkpoint's values (its settings: {checkpoint / CONFIG_FILE}), or start a new run "
            f"(another train.output_dir, or train.overwrite=true)"
        )
    step = yaml.safe_load((checkpoint / STATE_FILE).read_text())["step"]
    if cfg.train.max_steps < step:
        raise ValueError(
            f"train.max_steps={cfg.train.max_steps} is below the step of the checkpoint it resumes ({step}, "
            f"{checkpoint}): set train.max_steps to {step} or more"
        )
    return [f"{key}: {old} → {new} ({APPLIED[key]})" for key, old, new in changed]

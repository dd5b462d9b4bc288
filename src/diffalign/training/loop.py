"""The training loop on accelerate that every method plugs into, as three phases.

`train(cfg)` runs the **setup** phase (`run_setup`: the method, the batch source it names, the trainable UNet,
the reference, the optimizer, a restored checkpoint), the **train** phase (micro-steps through the step runner
(`steps`) for `train.max_steps` optimizer steps, with a progress bar, metrics (`step_log`), validation grids
and resumable checkpoints) and the **save** phase (the LoRA in diffusers' format or the full UNet, the resolved
config, the metrics log and the model card `README.md`: `run_card`). It never asks what a method, source or
reference is: it calls their hooks.

The output folder is the run's alone (`run_folder`: a lock, and no mixing with another run's outputs);
weights are checked finite before any of them is saved (`steps`); Ctrl-C or SIGTERM saves a checkpoint
after the current step and stops (`interrupts`).
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config.schema import RunConfig
from ..files import atomic_save, atomic_write_text
from ..threads import cpu_threads
from .checkpoint import CONFIG_FILE
from .interrupts import InterruptGuard, stopped
from .randomness import BatchRandom
from .run_folder import METRICS_FILE
from .run_card import write_run_card
from .run_setup import Run, set_up
from .saved_weights import write_weights
from .setup import uncompiled
from .state import full_trainable_state
from .step_log import StepLog, flat_config, keep_metrics_until
from .steps import TrainingDiverged, any_process
from .validation import log_grid

__all__ = ["TrainResult", "TrainingDiverged", "describe_batch", "train"]


@dataclass
class TrainResult:
    """Where a finished run put its outputs, and its last logged metrics."""

    output_dir: Path
    weights: Path
    config: Path
    metrics: dict[str, float]
    is_main_process: bool = True


def describe_batch(cfg: RunConfig, processes: int, unit: str = "pairs", substeps: int = 1) -> str:
    """The effective-batch arithmetic printed at start (ddpo-pytorch style); `unit` names what a batch holds,
    `substeps` the micro-steps each batch is used for (D3PO: the trained steps of its trajectories)."""
    t = cfg.train
    per_step = t.batch_size * t.grad_accum * processes
    reuse = f", each used for {substeps} micro-steps (accumulated)" if substeps > 1 else ""
    return (
        f"effective batch: {t.batch_size} {unit}/device x {t.grad_accum} accumulation x {processes} process(es) "
        f"= {per_step} {unit} per optimizer step{reuse}; {t.max_steps} steps = {per_step * t.max_steps} {unit}"
    )


def _save_weights(
    cfg: RunConfig, unet: torch.nn.Module, state_dict: dict[str, torch.Tensor], family: str, out_dir: Path
) -> Path:
    return atomic_save(out_dir, lambda tmp: write_weights(tmp, unet, state_dict, family, cfg.lora.enabled))


def train(cfg: RunConfig) -> TrainResult:
    """Run one training job described by `cfg` and return where its outputs are."""
    threads = cfg.train.cpu_threads if cfg.train.cpu or not torch.cuda.is_available() else 0
    with cpu_threads(threads), ExitStack() as stack:  # the stack holds the run folder's lock and the signal handlers
        trackers = [name for name in cfg.train.trackers if name != "none"]
        run = set_up(cfg, stack, trackers)
        log = start_log(run, trackers)
        guard = stack.enter_context(InterruptGuard())
        try:
            stop = train_steps(run, log, guard)
        finally:
            log.close()
        if stop:
            run.accelerator.end_training()
            interrupted = stopped(guard.signum, run.step, run.runner.last_checkpoint, run.out_dir / CONFIG_FILE,
                                  run.accelerator.num_processes)
            if run.accelerator.is_main_process:
                print(interrupted.message, file=sys.stderr)
            raise interrupted
        return save_result(run, log.last)


def start_log(run: Run, trackers: list[str]) -> StepLog:
    """Print what the run trains, write its config and start its metrics log (a resumed run keeps the lines of
    the steps before its checkpoint)."""
    cfg, acc, out_dir = run.cfg, run.accelerator, run.out_dir
    metrics_path = out_dir / METRICS_FILE
    resumed = run.folder.resume_from
    if acc.is_main_process:
        parts = run.parts
        print(f"model {parts.source} ({parts.family}, {parts.prediction_type}); objective {cfg.objective.name}")
        print(run.source.describe())
        lora = "LoRA r=" + str(cfg.lora.rank) if cfg.lora.enabled else "full UNet"
        print(f"trainable parameters {run.trainable:,} ({lora})")
        print(describe_batch(cfg, acc.num_processes, run.source.unit, run.substeps)
              + f"; learning rate {run.learning_rate:g}")
        if resumed is not None:
            print(f"resumed from {resumed} at step {run.step} (micro-step {run.micro})")
        for note in run.folder.notes:
            print(note)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / CONFIG_FILE, run.state.config_text)
        if resumed is not None:
            keep_metrics_until(metrics_path, run.step)
        elif metrics_path.exists():
            metrics_path.unlink()
    if trackers:
        acc.init_trackers("diffalign", config=flat_config(cfg))
    return StepLog(cfg, acc, metrics_path, run.step, run.source.unit, trackers)


def train_steps(run: Run, log: StepLog, guard: InterruptGuard) -> bool:
    """The train phase: micro-steps until `train.max_steps` optimizer steps, validating and checkpointing as
    configured; True when a signal stopped it early (after saving a checkpoint)."""
    cfg, acc, t = run.cfg, run.accelerator, run.cfg.train
    device, rank, world = acc.device, acc.process_index, acc.num_processes
    for raw in run.source.batches(run.micro) if run.step < t.max_steps else []:
        run.reference.refresh(run.step, t.seed, run.micro)
        rand = BatchRandom(t.seed, run.micro, len(raw), rank, world, device)
        run.micro += 1
        metrics = run.runner.run(run.source.prepare(raw, rand), rand, run.step)
        log.add(metrics)
        run.source.observe({k: float(v) for k, v in metrics.items()})
        if not acc.sync_gradients:
            continue
        run.step += 1
        log.step_done(run.step, run.runner.lr_scheduler.get_last_lr()[0], run.runner.grad_norm)
        stop = any_process(acc, guard.requested) and run.step < t.max_steps  # Ctrl-C, SIGTERM: save, then stop
        if not stop and run.validator is not None and (run.step % cfg.validation.every == 0 or run.step == t.max_steps):
            validate(run, log)
        if stop or (t.checkpoint_every and run.step % t.checkpoint_every == 0 and run.step < t.max_steps):
            run.runner.checkpoint(run.state, run.out_dir, run.step, run.micro, t.keep_checkpoints)
        if stop:
            return True
        if run.step >= t.max_steps:
            break
    return False


def validate(run: Run, log: StepLog) -> None:
    """Draw the validation grid of the current step (main process; every process when the UNet is sharded)."""
    acc = run.accelerator
    if not (acc.is_main_process or run.sharded):  # a sharded UNet samples only with every process
        return
    with uncompiled(run.cfg.train.compile != "off"):  # sampling shapes would compile graphs of their own
        _, grid = run.validator.run(acc.unwrap_model(run.unet), run.step, run.out_dir, acc.autocast,
                                    save=acc.is_main_process)
    if log.trackers and acc.is_main_process:
        log_grid(acc, grid, run.step)


def save_result(run: Run, last: dict[str, float]) -> TrainResult:
    """The save phase: the source's summary, then the final weights (checked finite) and the result."""
    acc, out_dir = run.accelerator, run.out_dir
    acc.wait_for_everyone()
    summary = run.source.summary()  # every process: an online source ends its round's log line here
    if acc.is_main_process and summary:
        print(summary)
    weights = out_dir
    run.runner.check_weights(run.step, "the final weights")
    state_dict, _ = full_trainable_state(run.unet)  # every process: gathers FSDP shards
    if acc.is_main_process:
        weights = _save_weights(run.cfg, acc.unwrap_model(run.unet), state_dict, run.parts.family, out_dir)
        data = run.source.describe() + (f"\n\n{summary}" if summary else "")
        card = write_run_card(out_dir, run.cfg, run.parts.family, run.step, acc.num_processes, acc.device, data,
                              run.source.unit, run.folder.resume_from)
        print(f"saved {weights}\nconfig {out_dir / CONFIG_FILE}\nmodel card {card}")
    acc.end_training()
    return TrainResult(out_dir, weights, out_dir / CONFIG_FILE, last, acc.is_main_process)

"""What a run logs as it trains: the means of the method's metrics between logged steps, with the step's
learning rate, gradient norm, throughput, memory and time, written to OUTPUT_DIR/metrics.jsonl, the trackers
(tensorboard, wandb) and the progress bar."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..config.schema import RunConfig
from ..files import atomic_write_text

BAR_KEYS = ("loss", "implicit_acc", "reward_margin", "reward", "ratio", "clip_fraction")


def flat_config(cfg: RunConfig) -> dict[str, float | int | str | bool]:
    """The config as flat dotted scalars, for the trackers' hyper-parameter tables."""
    out: dict[str, float | int | str | bool] = {}

    def walk(obj, prefix: str) -> None:
        for key, value in vars(obj).items():
            if hasattr(value, "__dataclass_fields__"):
                walk(value, f"{prefix}{key}.")
            else:
                out[prefix + key] = value if isinstance(value, (int, float, str, bool)) else str(value)

    walk(cfg, "")
    return out


def peak_memory_gib(device: torch.device) -> float:
    """The peak GPU memory allocated so far (CUDA), or the process's peak resident memory (CPU), in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def keep_metrics_until(path: Path, step: int) -> None:
    """Keep the metrics logged up to `step` (a resumed run rewrites what came after its checkpoint)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def pooled_means(sums: dict[str, float], counts: dict[str, int], accelerator: Accelerator) -> dict[str, float]:
    """Each key's mean over the micro-steps of every process that reported it: the sums and counts of all
    processes added up (the keys of all processes, so a process that saw none of a key still takes part)."""
    if accelerator.num_processes == 1:
        return {k: v / counts[k] for k, v in sums.items()}
    from accelerate.utils import gather_object

    keys = sorted({k for keys in gather_object([sorted(sums)]) for k in keys})
    local = torch.tensor([[sums.get(k, 0.0), float(counts.get(k, 0))] for k in keys], dtype=torch.float64,
                         device=accelerator.device).reshape(len(keys), 2)
    total = accelerator.reduce(local, "sum")
    return {k: (s / c if c else float("nan")) for k, (s, c) in zip(keys, total.tolist())}


class StepLog:
    """The running means of the metrics between logged steps, and where they are written."""

    def __init__(self, cfg: RunConfig, accelerator: Accelerator, path: Path, step: int, unit: str,
                 trackers: list[str]) -> None:
        t = cfg.train
        self.cfg, self.accelerator, self.unit, self.trackers = cfg, accelerator, unit, trackers
        self.entries_per_step = t.batch_size * t.grad_accum * accelerator.num_processes
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}  # micro-steps that reported each key (a method may skip one: D3PO's
        # batch without a scorable pair)
        self.last: dict[str, float] = {}
        self.start = self.last_time = time.time()
        self.last_step = step
        self.file = path.open("a") if accelerator.is_main_process else None
        self.progress = tqdm(total=t.max_steps, initial=step, desc=cfg.objective.name,
                             disable=not accelerator.is_main_process, dynamic_ncols=True)

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        """One micro-step's metrics."""
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
            self.counts[key] = self.counts.get(key, 0) + 1

    def step_done(self, step: int, lr: float, grad_norm: float) -> None:
        """An optimizer step ended: advance the bar and, every `train.log_every` steps and at the last, log."""
        self.progress.update(1)
        if step % self.cfg.train.log_every and step != self.cfg.train.max_steps:
            return
        now = time.time()
        acc = self.accelerator
        last = pooled_means(self.sums, self.counts, acc)
        self.sums, self.counts = {}, {}
        rate = (step - self.last_step) * self.entries_per_step / max(now - self.last_time, 1e-9)
        last.update(step=step, lr=lr, grad_norm=grad_norm, **{f"{self.unit}_per_s": rate},
                    peak_memory_gib=peak_memory_gib(acc.device), seconds=now - self.start)
        self.last, self.last_time, self.last_step = last, now, step
        self.progress.set_postfix({k: f"{last[k]:.4g}" for k in BAR_KEYS if k in last})
        if self.file is not None:
            self.file.write(json.dumps(last) + "\n")
            self.file.flush()
        if self.trackers:
            acc.log({k: v for k, v in last.items() if k != "step"}, step=step)

    def close(self) -> None:
        """Close the bar and the metrics file."""
        self.progress.close()
        if self.file is not None:
            self.file.close()

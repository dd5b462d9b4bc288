"""The training loop on accelerate that every objective plugs into.

`train(cfg)` loads the base model, attaches LoRA (or prepares full fine-tuning with a frozen copy as
reference), streams preference pairs, and runs the objective's method for `train.max_steps`
optimizer steps with a progress bar (loss, implicit accuracy, reward margin, ETA). At the end it
writes the LoRA in diffusers' format (or the full UNet), the resolved config and the metrics log.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from ..config.core import dump_yaml
from ..config.schema import RunConfig
from ..data.pairs import PreferencePairs, collate_pairs
from ..models.loading import DTYPES, DiffusionParts, load_parts
from ..models.lora import attach_lora, save_lora
from ..models.reference import AdapterDisabledReference, FrozenCopyReference
from .encode import encode_pairs
from .files import atomic_save, atomic_write_text
from .methods import TrainableModel, build_method

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainResult:
    """Where a finished run put its outputs, and its last logged metrics."""

    output_dir: Path
    weights: Path
    config: Path
    metrics: dict[str, float]


def _save_unet(unet: torch.nn.Module, folder: Path) -> Path:
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    return folder / "unet"


def build_optimizer(params: list[torch.nn.Parameter], cfg: RunConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW or Adafactor (fixed learning rate, as the Diffusion-DPO SDXL recipe) over `params`."""
    t = cfg.train
    if t.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            params, lr=lr, weight_decay=t.weight_decay, clip_threshold=1.0, scale_parameter=False, relative_step=False
        )
    return torch.optim.AdamW(
        params, lr=lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon, weight_decay=t.weight_decay
    )


def describe_batch(cfg: RunConfig, processes: int) -> str:
    """The effective-batch arithmetic printed at start (ddpo-pytorch style)."""
    t = cfg.train
    per_step = t.batch_size * t.grad_accum * processes
    return (
        f"effective batch: {t.batch_size} pairs/device x {t.grad_accum} accumulation x {processes} process(es) "
        f"= {per_step} pairs per optimizer step; {t.max_steps} steps = {per_step * t.max_steps} pairs"
    )


class _Averages:
    """Running means of the metrics between two progress-bar updates."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.count += 1

    def pop(self) -> dict[str, float]:
        out = {k: v / max(self.count, 1) for k, v in self.sums.items()}
        self.sums, self.count = {}, 0
        return out


def prepare_unet(cfg: RunConfig, parts: DiffusionParts, needs_reference: bool, device: torch.device):
    """Make the UNet trainable (LoRA or full) and build the reference: adapters off, or a frozen copy."""
    unet = parts.unet
    reference: AdapterDisabledReference | FrozenCopyReference | None = None
    if cfg.lora.enabled:
        unet.to(DTYPES[cfg.model.frozen_dtype])
        params = attach_lora(unet, cfg.lora)
        if needs_reference:
            reference = AdapterDisabledReference(unet)
    else:
        unet.requires_grad_(True)
        params = list(unet.parameters())
        if needs_reference:
            reference = FrozenCopyReference(unet, DTYPES[cfg.model.frozen_dtype])
            reference.unet.to(device)
    unet.train()
    return params, reference


def build_loader(cfg: RunConfig) -> tuple[PreferencePairs, torch.utils.data.DataLoader]:
    """The pair dataset and a seeded, shuffling loader over it."""
    d, t = cfg.data, cfg.train
    dataset = PreferencePairs(d.path, d.split, d.resolution, d.random_crop, d.random_flip, d.max_pairs, seed=t.seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=t.batch_size,
        shuffle=True,
        drop_last=len(dataset) >= t.batch_size,
        collate_fn=collate_pairs,
        num_workers=d.num_workers,
        generator=torch.Generator().manual_seed(t.seed),
    )
    return dataset, loader


def _save_weights(cfg: RunConfig, unet: torch.nn.Module, family: str, out_dir: Path) -> Path:
    if cfg.lora.enabled:
        return atomic_save(out_dir, lambda tmp: save_lora(unet, tmp, family))
    return atomic_save(out_dir, lambda tmp: _save_unet(unet, tmp))


def train(cfg: RunConfig) -> TrainResult:
    """Run one training job described by `cfg` and return where its outputs are."""
    t = cfg.train
    accelerator = Accelerator(mixed_precision=t.mixed_precision, gradient_accumulation_steps=t.grad_accum, cpu=t.cpu)
    set_seed(t.seed)
    device = accelerator.device
    out_dir = Path(t.output_dir)

    # LoRA leaves the UNet frozen: load it straight in the frozen dtype (no float32 copy of SDXL in memory)
    parts = load_parts(cfg.model, trainable_dtype=DTYPES[cfg.model.frozen_dtype] if cfg.lora.enabled else torch.float32)
    method = build_method(cfg.objective)
    params, reference = prepare_unet(cfg, parts, method.needs_reference, device)
    for frozen in (parts.vae, *parts.text_encoders):
        frozen.to(device)
    dataset, loader = build_loader(cfg)
    lr = t.learning_rate * (t.batch_size * t.grad_accum * accelerator.num_processes if t.scale_lr else 1)
    optimizer = build_optimizer(params, cfg, lr)
    lr_scheduler = get_scheduler(
        t.lr_scheduler,
        optimizer,
        num_warmup_steps=t.warmup_steps * accelerator.num_processes,
        num_training_steps=t.max_steps * accelerator.num_processes,
    )
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(parts.unet, optimizer, loader, lr_scheduler)
    model = TrainableModel(unet, reference, parts.noise_scheduler, parts.prediction_type)
    generator = torch.Generator(device=device).manual_seed(t.seed + accelerator.process_index)

    if accelerator.is_main_process:
        print(f"model {parts.source} ({parts.family}, {parts.prediction_type}); objective {cfg.objective.name}")
        print(
            f"data {cfg.data.path}: {len(dataset)} decided pairs ({dataset.dropped} ties/undecided dropped); "
            f"trainable parameters {sum(p.numel() for p in params):,}"
            f" ({'LoRA r=' + str(cfg.lora.rank) if cfg.lora.enabled else 'full UNet'})"
        )
        print(describe_batch(cfg, accelerator.num_processes) + f"; learning rate {lr:g}")
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / CONFIG_FILE, dump_yaml(cfg))
    metrics_log = (out_dir / METRICS_FILE).open("w") if accelerator.is_main_process else None

    progress = tqdm(total=t.max_steps, desc=cfg.objective.name, disable=not accelerator.is_main_process, dynamic_ncols=True)
    averages = _Averages()
    last: dict[str, float] = {}
    step, start = 0, time.time()
    while step < t.max_steps:
        for batch in loader:
            with accelerator.accumulate(unet):
                pairs = encode_pairs(parts, batch, cfg.data.empty_prompt_prob, generator, cfg.data.resolution, device)
                with accelerator.autocast():
                    out = method(model, pairs, generator)
                if not torch.isfinite(out.loss):
                    raise FloatingPointError(
                        f"non-finite loss {out.loss.item()} at step {step}; lower train.learning_rate or the "
                        f"objective's beta, or use train.mixed_precision=bf16 instead of fp16"
                    )
                accelerator.backward(out.loss)
                if accelerator.sync_gradients and t.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(params, t.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            averages.add({"loss": out.loss.detach(), **out.metrics})
            if not accelerator.sync_gradients:
                continue
            step += 1
            progress.update(1)
            if step % t.log_every == 0 or step == t.max_steps:
                last = averages.pop()
                last.update(step=step, lr=lr_scheduler.get_last_lr()[0], seconds=time.time() - start)
                progress.set_postfix({k: f"{last[k]:.4g}" for k in ("loss", "implicit_acc", "reward_margin") if k in last})
                if metrics_log is not None:
                    metrics_log.write(json.dumps(last) + "\n")
                    metrics_log.flush()
            if step >= t.max_steps:
                break
    progress.close()
    if metrics_log is not None:
        metrics_log.close()

    accelerator.wait_for_everyone()
    weights = out_dir
    if accelerator.is_main_process:
        weights = _save_weights(cfg, accelerator.unwrap_model(unet), parts.family, out_dir)
        print(f"saved {weights}\nconfig {out_dir / CONFIG_FILE}")
    accelerator.end_training()
    return TrainResult(out_dir, weights, out_dir / CONFIG_FILE, last)

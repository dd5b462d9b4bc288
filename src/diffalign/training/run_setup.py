"""The setup phase of a training run: everything it trains with, built from its config.

The method names what it needs (its batch source class, its reference, its micro-steps per batch); this
phase asks the source class what the run needs before any model is loaded, claims the run folder, loads the
models, builds the source, the optimizer and the checkpointed state, and restores a checkpoint when resuming.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from diffusers.optimization import get_scheduler

from ..config.core import dump_yaml
from ..config.schema import RunConfig
from ..data.cache import find_cache
from ..models.loading import DTYPES, DiffusionParts, load_parts
from ..models.reference import ReferenceModel, compile_unet
from .methods import Method, TrainableModel, build_method
from .reference_errors import precompute_reference_errors, wants_precompute
from .run_folder import LOGS_DIR, RunFolder, claim_run_folder
from .setup import (
    build_optimizer,
    check_channels_last,
    check_compile,
    check_distributed,
    configure_unet,
    prepare_unet,
)
from .sources.base import BatchSource, SourceContext
from .state import TrainingState
from .steps import StepRunner
from .validation import Validator


@dataclass
class Run:
    """A run ready to train: its config, models, source, optimizer and where it stands."""

    cfg: RunConfig
    accelerator: Accelerator
    method: Method
    substeps: int
    parts: DiffusionParts
    unet: torch.nn.Module  # as prepared by accelerate
    reference: ReferenceModel  # a no-op one for a method without reference
    source: BatchSource
    state: TrainingState
    runner: StepRunner
    validator: Validator | None
    folder: RunFolder
    learning_rate: float
    trainable: int  # trainable parameters
    sharded: bool
    step: int = 0
    micro: int = 0

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.train.output_dir)


def make_accelerator(cfg: RunConfig, substeps: int, trackers: list[str]) -> Accelerator:
    """Accelerate for the run: mixed precision, gradient accumulation over `grad_accum × substeps` micro-steps."""
    t = cfg.train
    return Accelerator(mixed_precision=t.mixed_precision, gradient_accumulation_steps=t.grad_accum * substeps,
                       cpu=t.cpu, log_with=trackers or None, project_dir=str(Path(t.output_dir) / LOGS_DIR))


def set_up(cfg: RunConfig, stack: ExitStack, trackers: list[str]) -> Run:
    """Build the run of `cfg` (the run folder's lock is held until `stack` closes)."""
    t = cfg.train
    method = build_method(cfg.objective)
    method.validate(cfg)
    source_class = method.source
    source_class.check(cfg)
    substeps = method.micro_steps_per_batch(cfg)
    accelerator = make_accelerator(cfg, substeps, trackers)
    check_distributed(accelerator)
    sharded = accelerator.distributed_type == DistributedType.FSDP
    check_compile(cfg, method, sharded)
    check_channels_last(cfg, sharded)
    set_seed(t.seed)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    folder = claim_run_folder(cfg, accelerator, stack)
    resume_from = folder.resume_from

    cache = find_cache(cfg.model, cfg.data) if source_class.reads_latent_cache(cfg) else None
    # LoRA leaves the UNet frozen: load it straight in the frozen dtype (no float32 copy of SDXL in memory)
    parts = load_parts(cfg.model, trainable_dtype=DTYPES[cfg.model.frozen_dtype] if cfg.lora.enabled else torch.float32,
                       encoders=cache is None)
    params, reference = prepare_unet(cfg, parts, method.reference, device)
    configure_unet(parts.unet, cfg)
    for frozen in (parts.vae, *parts.text_encoders):
        if frozen is not None:
            frozen.to(device)
    source = source_class.build(SourceContext(
        cfg, method, parts, cache, device, rank, world, Path(t.output_dir), resume_from is not None, substeps,
        gather=accelerator.gather, main_process_first=accelerator.main_process_first, accelerator=accelerator,
    ))
    lr = t.learning_rate * (t.batch_size * t.grad_accum * world if t.scale_lr else 1)
    optimizer = build_optimizer(params, cfg, lr, sharded=sharded)
    lr_scheduler = get_scheduler(t.lr_scheduler, optimizer, num_warmup_steps=t.warmup_steps * world,
                                 num_training_steps=t.max_steps * world)
    trainable = sum(p.numel() for p in params)
    unet, optimizer, lr_scheduler = accelerator.prepare(parts.unet, optimizer, lr_scheduler)
    params = [p for p in unet.parameters() if p.requires_grad]  # FSDP2 swaps in sharded parameters
    if t.compile != "off":
        compile_unet(accelerator.unwrap_model(unet), t.compile)
    model = TrainableModel(unet, reference, parts.noise_scheduler, parts.prediction_type)
    source.attach(accelerator.unwrap_model(unet), reference, accelerator.autocast)
    if wants_precompute(cfg, method, cache is not None):
        model.precomputed = precompute_reference_errors(
            cfg, method, model, source, t.max_steps * t.grad_accum * substeps, rank, world, device,
            accelerator.autocast, log=print if accelerator.is_main_process else lambda _: None,
            progress=accelerator.is_main_process,
        )
    hooks = reference if reference is not None else ReferenceModel()
    validator = Validator(cfg, parts, hooks.base_unet, device) if cfg.validation.every else None
    state = TrainingState(
        accelerator, unet, optimizer, lr_scheduler, cfg.lora.enabled, parts.family, t.batch_size * world,
        dump_yaml(cfg), extras=[source, hooks, method], run_id=folder.run_id,
    )
    step, micro = state.restore(resume_from) if resume_from is not None else (0, 0)
    runner = StepRunner(accelerator, method, model, params, optimizer, lr_scheduler, t.max_grad_norm, resume_from)
    return Run(cfg, accelerator, method, substeps, parts, unet, hooks, source, state, runner, validator, folder, lr,
               trainable, sharded, step, micro)

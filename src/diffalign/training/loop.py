"""The training loop on accelerate that every method plugs into.

`train(cfg)` sets the run up (`setup`: the trainable UNet, the reference the method declared, the
optimizer), builds the batch source the method declared (`sources`: offline pairs or online rollouts),
and runs micro-steps through the step runner (`steps`) for `train.max_steps` optimizer steps, with a
progress bar (loss, implicit accuracy, reward margin, ETA), metrics, validation grids and resumable
checkpoints. At the end it writes the LoRA in diffusers' format (or the full UNet), the resolved config
and the metrics log. It never branches on a method's name, only on what the method declares.

The output folder is the run's alone (`run_folder`: a lock, and no mixing with another run's outputs);
weights are checked finite before any of them is saved (`steps`); Ctrl-C or SIGTERM saves a checkpoint
after the current step and stops (`interrupts`).
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from diffusers.optimization import get_scheduler
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..config.core import dump_yaml
from ..config.schema import RunConfig
from ..data.cache import find_cache
from ..data.skip_report import SKIP_FILE
from ..files import atomic_save, atomic_write_text
from ..models.loading import DTYPES, DiffusionParts, load_parts
from ..models.lora import save_lora
from ..models.reference import FrozenCopyReference, compile_unet
from ..threads import cpu_threads
from .checkpoint import CONFIG_FILE
from .interrupts import InterruptGuard, stopped
from .methods import Method, TrainableModel, build_method
from .randomness import BatchRandom
from .reference_errors import precompute_reference_errors, wants_precompute
from .reference_pool import ReferencePool
from .run_folder import LOGS_DIR, METRICS_FILE, claim_run_folder
from .setup import (
    build_optimizer,
    check_channels_last,
    check_compile,
    check_distributed,
    configure_unet,
    prepare_unet,
    uncompiled,
)
from .sources.base import BatchSource
from .sources.offline import OfflinePairs, build_dataset
from .state import TrainingState, full_trainable_state
from .steps import StepRunner, TrainingDiverged, any_process
from .validation import Validator, log_grid

__all__ = ["TrainResult", "TrainingDiverged", "describe_batch", "train"]


@dataclass
class TrainResult:
    """Where a finished run put its outputs, and its last logged metrics."""

    output_dir: Path
    weights: Path
    config: Path
    metrics: dict[str, float]
    is_main_process: bool = True


def _save_unet(unet: torch.nn.Module, state_dict: dict[str, torch.Tensor], folder: Path) -> Path:
    """The fine-tuned UNet as a diffusers model folder (`UNet2DConditionModel.from_pretrained(folder / "unet")`)."""
    (folder / "unet").mkdir()
    unet.save_config(folder / "unet")
    tensors = {k: v.contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(folder / "unet" / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    return folder / "unet"


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


def _save_weights(
    cfg: RunConfig, unet: torch.nn.Module, state_dict: dict[str, torch.Tensor], family: str, out_dir: Path
) -> Path:
    if cfg.lora.enabled:
        return atomic_save(out_dir, lambda tmp: save_lora(unet, tmp, family, state_dict))
    return atomic_save(out_dir, lambda tmp: _save_unet(unet, state_dict, tmp))


def _flat_config(cfg: RunConfig) -> dict[str, float | int | str | bool]:
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


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def _resume_metrics_log(path: Path, step: int) -> None:
    """Keep the metrics logged up to `step` (a resumed run rewrites what came after its checkpoint)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))




def build_source(
    cfg: RunConfig, method: Method, parts: DiffusionParts, cache, accelerator: Accelerator, skip_path: Path,
    resuming: bool, substeps: int = 1,
) -> BatchSource:
    """The batch source the method declared: offline pairs or winners (from the latent cache when there is
    one), winners with reference samples, or online rollouts of the policy judged by `rollout.reward`."""
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    if method.data == "rollouts":
        from .sources.online import OnlineRollouts

        return OnlineRollouts(cfg, parts, device, rank, world, substeps=substeps,
                              out_dir=Path(cfg.train.output_dir))
    winners = method.data == "winners"
    if method.reference_samples and not (winners and method.reference != "none"):
        raise TypeError(f"{type(method).__name__}: reference_samples needs data='winners' and a reference")
    with accelerator.main_process_first():  # AI-feedback scores are computed once, then read by the others
        if accelerator.is_main_process and not resuming:
            skip_path.unlink(missing_ok=True)
        pairs = build_dataset(cfg, device, rank=rank, world=world, skip_report=skip_path, winners_only=winners,
                              method=method)
    source = OfflinePairs(cfg, parts, pairs, cache, method.per_image_captions, device, rank, world, skip_path)
    if method.reference_samples:
        from .sources.reference_samples import ReferenceSampled

        return ReferenceSampled(source, cfg, parts, device)
    return source


def train(cfg: RunConfig) -> TrainResult:
    """Run one training job described by `cfg` and return where its outputs are."""
    threads = cfg.train.cpu_threads if cfg.train.cpu or not torch.cuda.is_available() else 0
    with cpu_threads(threads), ExitStack() as stack:  # the stack holds the run folder's lock and the signal handlers
        return _train(cfg, stack)


def _train(cfg: RunConfig, stack: ExitStack) -> TrainResult:
    t = cfg.train
    out_dir = Path(t.output_dir)
    trackers = [name for name in t.trackers if name != "none"]
    method = build_method(cfg.objective)
    substeps = method.micro_steps_per_batch(cfg)
    accelerator = Accelerator(
        mixed_precision=t.mixed_precision,
        gradient_accumulation_steps=t.grad_accum * substeps,
        cpu=t.cpu,
        log_with=trackers or None,
        project_dir=str(out_dir / LOGS_DIR),
    )
    check_distributed(accelerator)
    sharded = accelerator.distributed_type == DistributedType.FSDP
    check_compile(cfg, method, sharded)
    check_channels_last(cfg, sharded)
    set_seed(t.seed)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    folder = claim_run_folder(cfg, accelerator, stack)  # the lock is held until `stack` closes
    resume_from = folder.resume_from

    online = method.data == "rollouts"
    if cfg.data.streaming and cfg.data.cache == "require" and not online:
        raise ValueError(
            "data.cache=require cannot apply to data.streaming=true (the latent cache is indexed by the rows of a "
            "downloaded table): set data.cache=auto (encode on the fly) or data.streaming=false"
        )
    cache = None if cfg.data.streaming or online else find_cache(cfg.model, cfg.data)
    # LoRA leaves the UNet frozen: load it straight in the frozen dtype (no float32 copy of SDXL in memory)
    parts = load_parts(
        cfg.model,
        trainable_dtype=DTYPES[cfg.model.frozen_dtype] if cfg.lora.enabled else torch.float32,
        encoders=cache is None,
    )
    params, reference = prepare_unet(cfg, parts, method.reference, device)
    configure_unet(parts.unet, cfg)
    for frozen in (parts.vae, *parts.text_encoders):
        if frozen is not None:
            frozen.to(device)
    skip_path = out_dir / SKIP_FILE
    source = build_source(cfg, method, parts, cache, accelerator, skip_path, resume_from is not None, substeps)
    lr = t.learning_rate * (t.batch_size * t.grad_accum * world if t.scale_lr else 1)
    optimizer = build_optimizer(params, cfg, lr, sharded=sharded)
    lr_scheduler = get_scheduler(
        t.lr_scheduler,
        optimizer,
        num_warmup_steps=t.warmup_steps * world,
        num_training_steps=t.max_steps * world,
    )
    n_trainable = sum(p.numel() for p in params)
    unet, optimizer, lr_scheduler = accelerator.prepare(parts.unet, optimizer, lr_scheduler)
    params = [p for p in unet.parameters() if p.requires_grad]  # FSDP2 swaps in sharded parameters
    if t.compile != "off":
        compile_unet(accelerator.unwrap_model(unet), t.compile)
    model = TrainableModel(unet, reference, parts.noise_scheduler, parts.prediction_type)
    if hasattr(source, "attach"):  # a source that samples: the policy (online rollouts) or the reference (SePPO)
        source.attach(accelerator.unwrap_model(unet), reference, accelerator.autocast)  # type: ignore[attr-defined]
    if wants_precompute(cfg, method, cache is not None):
        model.precomputed = precompute_reference_errors(
            cfg, method, model, source, t.max_steps * t.grad_accum * substeps, rank, world, device,
            accelerator.autocast, log=print if accelerator.is_main_process else lambda _: None,
            progress=accelerator.is_main_process,
        )
    base_unet = reference.unet if isinstance(reference, FrozenCopyReference) else None
    validator = Validator(cfg, parts, base_unet, device) if cfg.validation.every else None
    config_text = dump_yaml(cfg)
    state = TrainingState(
        accelerator, unet, optimizer, lr_scheduler, cfg.lora.enabled, parts.family, t.batch_size * world, config_text,
        extras=[x for x in (source, reference) if hasattr(x, "save") and hasattr(x, "restore")], run_id=folder.run_id,
    )
    step = micro = 0
    if resume_from is not None:
        step, micro = state.restore(resume_from)
    runner = StepRunner(accelerator, method, model, params, optimizer, lr_scheduler, t.max_grad_norm, resume_from)

    metrics_path = out_dir / METRICS_FILE
    unit = "prompts" if online else "pairs"
    if accelerator.is_main_process:
        print(f"model {parts.source} ({parts.family}, {parts.prediction_type}); objective {cfg.objective.name}")
        print(source.describe())
        print(f"trainable parameters {n_trainable:,} ({'LoRA r=' + str(cfg.lora.rank) if cfg.lora.enabled else 'full UNet'})")
        print(describe_batch(cfg, world, unit, substeps) + f"; learning rate {lr:g}")
        if resume_from is not None:
            print(f"resumed from {resume_from} at step {step} (micro-step {micro})")
        for note in folder.notes:
            print(note)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / CONFIG_FILE, config_text)
        if resume_from is not None:
            _resume_metrics_log(metrics_path, step)
        elif metrics_path.exists():
            metrics_path.unlink()
    if trackers:
        accelerator.init_trackers("diffalign", config=_flat_config(cfg))
    metrics_log = metrics_path.open("a") if accelerator.is_main_process else None

    progress = tqdm(
        total=t.max_steps, initial=step, desc=cfg.objective.name, disable=not accelerator.is_main_process,
        dynamic_ncols=True,
    )
    averages = _Averages()
    last: dict[str, float] = {}
    start, last_time, last_step = time.time(), time.time(), step
    guard, stop = stack.enter_context(InterruptGuard()), False
    for raw in source.batches(micro) if step < t.max_steps else []:
        if isinstance(reference, ReferencePool):
            reference.refresh(step, t.seed, micro)
        rand = BatchRandom(t.seed, micro, len(raw), rank, world, device)
        micro += 1
        averages.add(runner.run(source.prepare(raw, rand), rand, step))
        if not accelerator.sync_gradients:
            continue
        step += 1
        progress.update(1)
        if step % t.log_every == 0 or step == t.max_steps:
            now = time.time()
            last = averages.pop()
            if world > 1:  # the mean over every process's pairs, not only the main process's
                keys = sorted(last)
                means = accelerator.reduce(torch.tensor([last[k] for k in keys], device=device), "mean")
                last = dict(zip(keys, means.tolist()))
            last.update(
                step=step,
                lr=lr_scheduler.get_last_lr()[0],
                grad_norm=runner.grad_norm,
                **{f"{unit}_per_s": (step - last_step) * t.batch_size * t.grad_accum * world / max(now - last_time, 1e-9)},
                peak_memory_gib=_peak_memory_gib(device),
                seconds=now - start,
            )
            last_time, last_step = now, step
            progress.set_postfix({k: f"{last[k]:.4g}" for k in ("loss", "implicit_acc", "reward_margin") if k in last})
            if metrics_log is not None:
                metrics_log.write(json.dumps(last) + "\n")
                metrics_log.flush()
            if trackers:
                accelerator.log({k: v for k, v in last.items() if k != "step"}, step=step)
        stop = any_process(accelerator, guard.requested) and step < t.max_steps  # Ctrl-C, SIGTERM: save, then stop
        due = not stop and validator is not None and (step % cfg.validation.every == 0 or step == t.max_steps)
        if due and (accelerator.is_main_process or sharded):  # a sharded UNet samples only with every process
            with uncompiled(t.compile != "off"):  # sampling shapes would compile graphs of their own
                _, grid = validator.run(accelerator.unwrap_model(unet), step, out_dir, accelerator.autocast,
                                        save=accelerator.is_main_process)
            if trackers and accelerator.is_main_process:
                log_grid(accelerator, grid, step)
        if stop or (t.checkpoint_every and step % t.checkpoint_every == 0 and step < t.max_steps):
            runner.checkpoint(state, out_dir, step, micro, t.keep_checkpoints)
        if stop or step >= t.max_steps:
            break
    progress.close()
    if metrics_log is not None:
        metrics_log.close()
    if stop:
        accelerator.end_training()
        interrupted = stopped(guard.signum, step, runner.last_checkpoint, out_dir / CONFIG_FILE, world)
        if accelerator.is_main_process:
            print(interrupted.message, file=sys.stderr)
        raise interrupted

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        summary = source.summary()
        if summary:
            print(summary)
    weights = out_dir
    runner.check_weights(step, "the final weights")
    state_dict, _ = full_trainable_state(unet)  # every process: gathers FSDP shards
    if accelerator.is_main_process:
        weights = _save_weights(cfg, accelerator.unwrap_model(unet), state_dict, parts.family, out_dir)
        print(f"saved {weights}\nconfig {out_dir / CONFIG_FILE}")
    accelerator.end_training()
    return TrainResult(out_dir, weights, out_dir / CONFIG_FILE, last, accelerator.is_main_process)

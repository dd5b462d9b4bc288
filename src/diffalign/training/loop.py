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
from accelerate.utils import DistributedType, set_seed
from diffusers.optimization import get_scheduler
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..config.core import dump_yaml
from ..config.schema import RunConfig
from ..data.cache import CachedPairs, find_cache
from ..data.order import EpochBatches
from ..data.filters import PairFilter
from ..data.pairs import PreferencePairs, collate_pairs
from ..data.skip_report import SKIP_FILE, SkipReport, read_skipped
from ..data.streaming import StreamingPairs
from ..data.relabel import make_relabeller
from ..models.loading import DTYPES, DiffusionParts, load_parts
from ..models.lora import attach_lora, save_lora
from ..models.reference import AdapterDisabledReference, FrozenCopyReference
from .encode import encode_cached, encode_pairs
from ..files import atomic_save, atomic_write_text
from .checkpoint import resolve_resume
from .methods import TrainableModel, build_method
from .randomness import BatchRandom
from .state import TrainingState, full_trainable_state
from .validation import Validator, log_grid

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"


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


def build_optimizer(params: list[torch.nn.Parameter], cfg: RunConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW, 8-bit AdamW (bitsandbytes) or Adafactor (fixed learning rate, as the Diffusion-DPO SDXL recipe)."""
    t = cfg.train
    if t.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            params, lr=lr, weight_decay=t.weight_decay, clip_threshold=1.0, scale_parameter=False, relative_step=False
        )
    kwargs = dict(lr=lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon, weight_decay=t.weight_decay)
    if t.optimizer == "adamw8bit":
        try:
            import bitsandbytes
        except ImportError as error:
            raise RuntimeError(
                "train.optimizer=adamw8bit needs bitsandbytes (pip install bitsandbytes, CUDA only); or use adamw"
            ) from error
        return bitsandbytes.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def configure_unet(unet: torch.nn.Module, cfg: RunConfig) -> None:
    """Gradient checkpointing and the attention backend of the trained UNet; TF32 matmuls."""
    t = cfg.train
    torch.backends.cuda.matmul.allow_tf32 = t.allow_tf32
    torch.backends.cudnn.allow_tf32 = t.allow_tf32
    if t.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if t.attention == "xformers":
        try:
            import xformers  # noqa: F401
        except ImportError as error:
            raise RuntimeError(
                "train.attention=xformers but xformers is not installed: pip install 'diffalign[gpu]', "
                "or use train.attention=sdpa (PyTorch's fused attention, the default)"
            ) from error
        try:
            unet.enable_xformers_memory_efficient_attention()
        except (ValueError, NotImplementedError) as error:
            raise RuntimeError(f"train.attention=xformers cannot run here ({error}); use train.attention=sdpa") from error


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
    """Make the UNet trainable (LoRA or full) and build the reference: adapters off, or a frozen copy
    (on the CPU and streamed to `device` per call with `train.offload_reference`)."""
    unet = parts.unet
    reference: AdapterDisabledReference | FrozenCopyReference | None = None
    if cfg.lora.enabled:
        if cfg.train.offload_reference:
            raise ValueError(
                "train.offload_reference is for full fine-tuning (lora.enabled=false): with LoRA the reference is "
                "the trained UNet with its adapters switched off, there is no second UNet to offload"
            )
        unet.to(DTYPES[cfg.model.frozen_dtype])
        params = attach_lora(unet, cfg.lora)
        if needs_reference:
            reference = AdapterDisabledReference(unet)
    else:
        unet.requires_grad_(True)
        params = list(unet.parameters())
        if needs_reference:
            reference = FrozenCopyReference(unet, DTYPES[cfg.model.frozen_dtype])
            if cfg.train.offload_reference and device.type != "cpu":
                from accelerate import cpu_offload

                cpu_offload(reference.unet, execution_device=device)
            else:
                reference.unet.to(device)
    unet.train()
    return params, reference


def filter_options(cfg: RunConfig) -> dict:
    """The `PairFilter` keyword arguments of `cfg.data`."""
    d = cfg.data
    return dict(require_different=d.require_different, dedupe=d.dedupe,
                validation_fraction=d.validation_fraction, subset=d.subset)


def build_dataset(
    cfg: RunConfig,
    device: torch.device | None = None,
    *,
    rank: int = 0,
    world: int = 1,
    skip_report: str | Path | None = None,
) -> PreferencePairs | StreamingPairs:
    """The filtered pairs of `cfg.data` (a table, or with `data.streaming` this process's stream), relabelled
    by `data.relabel_with` (AI feedback) if set; undecodable pairs are listed in `skip_report`."""
    d = cfg.data
    report = SkipReport(skip_report)
    if d.streaming:
        if d.relabel_with:
            raise ValueError("data.relabel_with needs the whole table (scores are cached by row): set data.streaming=false")
        if d.num_workers:
            raise ValueError("data.streaming reads in the training process: set data.num_workers=0")
        return StreamingPairs(
            d.path, d.split, d.resolution, d.random_crop, d.random_flip, d.max_pairs, seed=cfg.train.seed,
            filter_options=filter_options(cfg), skip_report=report, dual_captions=d.dual_captions,
            shuffle_buffer=d.shuffle_buffer, rank=rank, world=world,
        )
    relabel = None
    if d.relabel_with:
        relabel = make_relabeller(d.relabel_with, d.relabel_tie_tolerance, d.cache_dir, device=device)
    return PreferencePairs(
        d.path, d.split, d.resolution, d.random_crop, d.random_flip, d.max_pairs, seed=cfg.train.seed, relabel=relabel,
        pair_filter=PairFilter(**filter_options(cfg)), skip_report=report, dual_captions=d.dual_captions,
    )


def build_loader(
    cfg: RunConfig, dataset: PreferencePairs | CachedPairs | StreamingPairs, rank: int = 0, world: int = 1,
    start: int = 0,
) -> torch.utils.data.DataLoader:
    """This process's endless stream of batches from global micro-step `start` on (see `data.order`; a
    stream skips the `start * batch_size` pairs this process consumed)."""
    if isinstance(dataset, StreamingPairs):
        dataset.start = start * cfg.train.batch_size
        return torch.utils.data.DataLoader(dataset, batch_size=cfg.train.batch_size, collate_fn=collate_pairs)
    sampler = EpochBatches(len(dataset), cfg.train.batch_size, cfg.train.seed, rank, world, start)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=dataset.collate if isinstance(dataset, CachedPairs) else collate_pairs,
        num_workers=cfg.data.num_workers,
        generator=torch.Generator().manual_seed(cfg.train.seed),  # worker seeds: leaves the global RNG alone
    )


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


def check_distributed(accelerator: Accelerator) -> None:
    """Refuse the accelerate set-ups the loop cannot checkpoint or validate correctly."""
    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        raise ValueError(
            "accelerate is configured for DeepSpeed, which diffalign does not support: its ZeRO optimizer state "
            "only saves in DeepSpeed's pickled format. For ZeRO-2/3-style sharding use FSDP2 "
            "(accelerate launch --config_file configs/accelerate/fsdp.yaml -m diffalign.cli.main train ...), "
            "or DDP (configs/accelerate/ddp.yaml)"
        )
    if kind == DistributedType.FSDP and accelerator.state.fsdp_plugin.fsdp_version != 2:
        raise ValueError(
            "accelerate is configured for FSDP version 1; diffalign needs FSDP2 (fsdp_version: 2 in the accelerate "
            "config, as in configs/accelerate/fsdp.yaml): FSDP1 flattens parameters, which LoRA and the "
            "reference passes cannot address by name"
        )


class TrainingDiverged(FloatingPointError):
    """A non-finite loss stopped the run."""


def train(cfg: RunConfig) -> TrainResult:
    """Run one training job described by `cfg` and return where its outputs are."""
    t = cfg.train
    out_dir = Path(t.output_dir)
    trackers = [name for name in t.trackers if name != "none"]
    accelerator = Accelerator(
        mixed_precision=t.mixed_precision,
        gradient_accumulation_steps=t.grad_accum,
        cpu=t.cpu,
        log_with=trackers or None,
        project_dir=str(out_dir / "logs"),
    )
    check_distributed(accelerator)
    sharded = accelerator.distributed_type == DistributedType.FSDP
    set_seed(t.seed)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    resume_from = resolve_resume(t.resume, out_dir)

    if cfg.data.streaming and cfg.data.cache == "require":
        raise ValueError(
            "data.cache=require cannot apply to data.streaming=true (the latent cache is indexed by the rows of a "
            "downloaded table): set data.cache=auto (encode on the fly) or data.streaming=false"
        )
    cache = None if cfg.data.streaming else find_cache(cfg.model, cfg.data)
    # LoRA leaves the UNet frozen: load it straight in the frozen dtype (no float32 copy of SDXL in memory)
    parts = load_parts(
        cfg.model,
        trainable_dtype=DTYPES[cfg.model.frozen_dtype] if cfg.lora.enabled else torch.float32,
        encoders=cache is None,
    )
    method = build_method(cfg.objective)
    params, reference = prepare_unet(cfg, parts, method.needs_reference, device)
    configure_unet(parts.unet, cfg)
    for frozen in (parts.vae, *parts.text_encoders):
        if frozen is not None:
            frozen.to(device)
    skip_path = out_dir / SKIP_FILE
    with accelerator.main_process_first():  # AI-feedback scores are computed once, then read by the others
        if accelerator.is_main_process and resume_from is None:
            skip_path.unlink(missing_ok=True)
        pairs_table = build_dataset(cfg, device, rank=rank, world=world, skip_report=skip_path)
    dataset = pairs_table if cache is None else CachedPairs(pairs_table, *cache)
    empty = None if cache is None else cache[1].conditioning([""])
    lr = t.learning_rate * (t.batch_size * t.grad_accum * world if t.scale_lr else 1)
    optimizer = build_optimizer(params, cfg, lr)
    lr_scheduler = get_scheduler(
        t.lr_scheduler,
        optimizer,
        num_warmup_steps=t.warmup_steps * world,
        num_training_steps=t.max_steps * world,
    )
    n_trainable = sum(p.numel() for p in params)
    unet, optimizer, lr_scheduler = accelerator.prepare(parts.unet, optimizer, lr_scheduler)
    params = [p for p in unet.parameters() if p.requires_grad]  # FSDP2 swaps in sharded parameters
    model = TrainableModel(unet, reference, parts.noise_scheduler, parts.prediction_type)
    base_unet = reference.unet if isinstance(reference, FrozenCopyReference) else None
    validator = Validator(cfg, parts, base_unet, device) if cfg.validation.every else None
    config_text = dump_yaml(cfg)
    state = TrainingState(
        accelerator, unet, optimizer, lr_scheduler, cfg.lora.enabled, parts.family, t.batch_size * world, config_text
    )
    step = micro = 0
    if resume_from is not None:
        step, micro = state.restore(resume_from)
    loader = build_loader(cfg, dataset, rank, world, start=micro)

    metrics_path = out_dir / METRICS_FILE
    if accelerator.is_main_process:
        print(f"model {parts.source} ({parts.family}, {parts.prediction_type}); objective {cfg.objective.name}")
        if isinstance(dataset, StreamingPairs):
            described = "streamed, filters applied on the fly (counts at the end)"
        else:
            described = f"{len(dataset)} decided pairs ({pairs_table.report.describe()})"
        print(
            f"data {cfg.data.path}: {described}; "
            f"trainable parameters {n_trainable:,}"
            f" ({'LoRA r=' + str(cfg.lora.rank) if cfg.lora.enabled else 'full UNet'})"
        )
        print(describe_batch(cfg, world) + f"; learning rate {lr:g}")
        if cache is not None:
            print(f"latent and text cache: {cache[0].folder}, {cache[1].folder} (no VAE or text encoder loaded)")
        if resume_from is not None:
            print(f"resumed from {resume_from} at step {step} (micro-step {micro})")
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
    last_checkpoint = resume_from
    for batch in loader if step < t.max_steps else []:
        rand = BatchRandom(t.seed, micro, len(batch), rank, world, device)
        micro += 1
        with accelerator.accumulate(unet):
            if empty is None:
                pairs = encode_pairs(parts, batch, cfg.data.empty_prompt_prob, rand, cfg.data.resolution, device)
            else:
                pairs = encode_cached(parts, batch, empty, cfg.data.empty_prompt_prob, rand, cfg.data.resolution, device)
            with accelerator.autocast():
                out = method(model, pairs, rand)
            finite = torch.isfinite(out.loss.detach()).float()
            if world > 1:
                finite = accelerator.reduce(finite, "min")
            if finite.item() < 1:
                raise TrainingDiverged(
                    f"non-finite loss at step {step + 1}: stopped. The last good checkpoint is "
                    f"{last_checkpoint or 'none (train.checkpoint_every=0 or not reached yet)'}; lower "
                    f"train.learning_rate or the objective's beta, or use train.mixed_precision=bf16 instead of fp16, "
                    f"then continue with train.resume=latest"
                )
            accelerator.backward(out.loss)
            step_metrics = {"loss": out.loss.detach(), **out.metrics}
            if accelerator.sync_gradients:
                limit = t.max_grad_norm if t.max_grad_norm is not None else float("inf")
                grad_norm = accelerator.clip_grad_norm_(params, limit)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        averages.add(step_metrics)
        if not accelerator.sync_gradients:
            continue
        last_grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
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
                grad_norm=last_grad_norm,
                pairs_per_s=(step - last_step) * t.batch_size * t.grad_accum * world / max(now - last_time, 1e-9),
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
        due = validator is not None and (step % cfg.validation.every == 0 or step == t.max_steps)
        if due and (accelerator.is_main_process or sharded):  # a sharded UNet samples only with every process
            _, grid = validator.run(accelerator.unwrap_model(unet), step, out_dir, accelerator.autocast,
                                    save=accelerator.is_main_process)
            if trackers and accelerator.is_main_process:
                log_grid(accelerator, grid, step)
        if t.checkpoint_every and step % t.checkpoint_every == 0 and step < t.max_steps:
            last_checkpoint = state.save(out_dir, step, micro, t.keep_checkpoints)
        if step >= t.max_steps:
            break
    progress.close()
    if metrics_log is not None:
        metrics_log.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if isinstance(dataset, StreamingPairs):
            print(f"streamed data, epoch {dataset.epoch} so far on this process: {dataset.report.describe()}")
        skipped = read_skipped(skip_path)
        if skipped:
            print(f"{len(skipped)} pair(s) skipped for undecodable images, listed in {skip_path}")
    weights = out_dir
    state_dict, _ = full_trainable_state(unet)  # every process: gathers FSDP shards
    if accelerator.is_main_process:
        weights = _save_weights(cfg, accelerator.unwrap_model(unet), state_dict, parts.family, out_dir)
        print(f"saved {weights}\nconfig {out_dir / CONFIG_FILE}")
    accelerator.end_training()
    return TrainResult(out_dir, weights, out_dir / CONFIG_FILE, last, accelerator.is_main_process)

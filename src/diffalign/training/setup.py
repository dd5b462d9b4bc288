"""Setting up a run before its first step: the accelerator checks, the trainable UNet (LoRA or full), the
reference the method asked for, the optimizer, and the attention and checkpointing options."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from ..config.schema import RunConfig
from ..models.loading import DTYPES, DiffusionParts
from ..models.lora import attach_lora
from ..models.reference import AdapterDisabledReference, CompiledAdapterReference, FrozenCopyReference
from .methods.base import Method, ReferenceKind
from .ema_reference import EMAReference
from .reference_pool import ReferencePool


def build_optimizer(
    params: list[torch.nn.Parameter], cfg: RunConfig, lr: float, sharded: bool = False
) -> torch.optim.Optimizer:
    """AdamW (fused with `train.fused_optimizer`, foreach when `sharded` by FSDP), 8-bit AdamW (bitsandbytes) or
    Adafactor (fixed learning rate, as the Diffusion-DPO SDXL recipe)."""
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
    if t.fused_optimizer:
        fusable = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
        kwargs.update(foreach=True) if sharded else kwargs.update(fused=fusable)
    return torch.optim.AdamW(params, **kwargs)


def uncompiled(active: bool = True) -> AbstractContextManager:
    """Run compiled modules eagerly inside the block when `active` (`torch.compiler.set_stance("force_eager")`):
    for passes of other shapes than training's (validation sampling), which would otherwise compile their own."""
    return torch.compiler.set_stance("force_eager") if active else nullcontext()


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


Reference = AdapterDisabledReference | CompiledAdapterReference | FrozenCopyReference | ReferencePool | EMAReference


def check_compile(cfg: RunConfig, method: Method, sharded: bool) -> None:
    """Refuse `train.compile` where a second graph would stand in for the trained model's: every comparison
    of the trained model with its reference (or with its own earlier samples) must run one compiled graph."""
    if cfg.train.compile == "off":
        return
    why = None
    if sharded:
        why = ("a compiled FSDP-sharded UNet is not supported (untested here); use DDP "
               "(configs/accelerate/ddp.yaml)")
    elif method.source.compile_conflict(cfg):
        why = method.source.compile_conflict(cfg)
    elif method.reference == "pool":
        why = "the reference pool switches peft adapters, which selects another compiled graph"
    elif method.reference == "base" and not cfg.lora.enabled:
        why = ("full fine-tuning keeps the reference as a separate frozen UNet, another compiled graph whose "
               "roundings would bias the loss from step 0; use LoRA")
    if why:
        raise ValueError(f"train.compile={cfg.train.compile} cannot apply to objective {cfg.objective.name!r}: "
                         f"{why}. Set train.compile=off")


def check_channels_last(cfg: RunConfig, sharded: bool) -> None:
    """Refuse `train.channels_last` with an FSDP-sharded UNet, whose flattened shards it has not been tried on."""
    if cfg.train.channels_last and sharded:
        raise ValueError("train.channels_last with an FSDP-sharded UNet is not supported (untested here): "
                         "set train.channels_last=false, or use DDP (configs/accelerate/ddp.yaml)")


def prepare_unet(
    cfg: RunConfig, parts: DiffusionParts, reference_kind: ReferenceKind, device: torch.device
) -> tuple[list[torch.nn.Parameter], Reference | None]:
    """Make the UNet trainable (LoRA or full; channels-last first with `train.channels_last`) and build the
    reference a method declared: none; the base model (adapters off, or a frozen copy on the CPU streamed to
    `device` per call with `train.offload_reference`); or a pool of earlier LoRA states (a second peft adapter)."""
    unet = parts.unet
    reference: Reference | None = None
    if cfg.train.channels_last:  # before any copy: a frozen reference keeps the layout
        unet.to(memory_format=torch.channels_last)
    if cfg.lora.enabled:
        if cfg.train.offload_reference:
            raise ValueError(
                "train.offload_reference is for full fine-tuning (lora.enabled=false): with LoRA the reference is "
                "the trained UNet with its adapters switched off, there is no second UNet to offload"
            )
        unet.to(DTYPES[cfg.model.frozen_dtype])
        params = attach_lora(unet, cfg.lora)
        if reference_kind == "base":
            reference = CompiledAdapterReference(unet) if cfg.train.compile != "off" else AdapterDisabledReference(unet)
        elif reference_kind == "pool":
            reference = ReferencePool(unet, cfg.lora, cfg.reference)
        elif reference_kind == "ema":
            reference = EMAReference(unet, cfg.lora, cfg.reference)
    else:
        if reference_kind in ("pool", "ema"):
            what = "a pool of earlier checkpoints" if reference_kind == "pool" else "an EMA of the weights"
            raise ValueError(f"this method's reference is {what}, kept as a LoRA adapter: set lora.enabled=true")
        unet.requires_grad_(True)
        params = list(unet.parameters())
        if reference_kind == "base":
            reference = FrozenCopyReference(unet, DTYPES[cfg.model.frozen_dtype])
            if cfg.train.offload_reference and device.type != "cpu":
                from accelerate import cpu_offload

                cpu_offload(reference.unet, execution_device=device)
            else:
                reference.unet.to(device)
    unet.train()
    return params, reference


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

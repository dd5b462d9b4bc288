"""LoRA adapters (peft) on the UNet: attach, collect the trainable parameters, save in diffusers' format."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from peft import LoraConfig as PeftLoraConfig
from peft.utils import get_peft_model_state_dict

from ..config.schema import LoraConfig
from ..files import give_usual_permissions
from .lora_files import LORA_WEIGHTS


def attach_lora(unet: UNet2DConditionModel, cfg: LoraConfig) -> list[torch.nn.Parameter]:
    """Freeze the UNet, add a LoRA adapter on `cfg.target_modules`, return its (float32) parameters."""
    unet.requires_grad_(False)
    unet.add_adapter(
        PeftLoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=list(cfg.target_modules),
            init_lora_weights=True if cfg.init == "default" else "gaussian",
        )
    )
    params = [p for p in unet.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"lora.target_modules {cfg.target_modules} matched no module of the UNet")
    for p in params:
        p.data = p.data.float()
    return params


def save_lora(
    unet: UNet2DConditionModel, out_dir: str | Path, family: str, state_dict: dict[str, torch.Tensor] | None = None
) -> Path:
    """Write the adapter as `pytorch_lora_weights.safetensors`, loadable by `pipe.load_lora_weights(out_dir)`,
    its rank and alpha in diffusers' adapter metadata (so it draws at the trained strength when alpha != rank).

    The keys stay in peft's `lora_A`/`lora_B` naming. diffusers' `convert_state_dict_to_diffusers`
    renames only attention projections to its legacy `lora.down`/`lora.up`; with any other target
    (convolutions, feed-forward) the file mixes both namings and `load_lora_weights` silently drops
    the attention layers. `state_dict`: the UNet's weights gathered from FSDP shards, if sharded.
    """
    from diffusers.utils.peft_utils import get_peft_kwargs

    layers = get_peft_model_state_dict(unet, state_dict=state_dict)
    # the adapter's rank and alpha in diffusers' metadata: without them `load_lora_weights` takes alpha = rank
    ranks = {key: tensor.shape[1] for key, tensor in layers.items() if key.endswith(".lora_B.weight")}
    metadata = get_peft_kwargs(ranks, {"unet": unet.peft_config["default"].lora_alpha}, layers)
    pipeline_cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipeline_cls.save_lora_weights(out_dir, unet_lora_layers=layers, safe_serialization=True,
                                   unet_lora_adapter_metadata=metadata)
    path = Path(out_dir) / LORA_WEIGHTS
    give_usual_permissions(path)  # safetensors writes 0600 files
    return path

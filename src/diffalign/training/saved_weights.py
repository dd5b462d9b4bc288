"""The weights a run hands over: the LoRA adapter in diffusers' format, or the fine-tuned UNet as a diffusers model
folder. The final save (OUTPUT_DIR) and the reward-hacking monitor's best weights (OUTPUT_DIR/best/) write them
alike, so `diffalign eval` and diffusers load either."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from ..models.lora import save_lora

UNET_DIR = "unet"
BEST_DIR = "best"  # the weights of the reward-hacking monitor's best gold score (`sources.monitor`)
BEST_FILE = "best.json"


def save_unet(unet: torch.nn.Module, state_dict: dict[str, torch.Tensor], folder: Path) -> Path:
    """Write the fine-tuned UNet as a diffusers model folder `folder/unet`
    (`UNet2DConditionModel.from_pretrained(folder / "unet")`) and return that folder."""
    (folder / UNET_DIR).mkdir()
    unet.save_config(folder / UNET_DIR)
    tensors = {k: v.contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(folder / UNET_DIR / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    return folder / UNET_DIR


def write_weights(folder: Path, unet: torch.nn.Module, state_dict: dict[str, torch.Tensor], family: str,
                  lora: bool) -> Path:
    """Write the trained weights into `folder` (the LoRA adapter file, or the `unet/` model folder for full
    fine-tuning) and return what was written; `state_dict` holds the trainable weights (gathered from shards)."""
    if lora:
        return save_lora(unet, folder, family, state_dict)
    return save_unet(unet, state_dict, folder)

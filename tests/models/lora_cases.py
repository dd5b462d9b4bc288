"""LoRA files that do not fit the tiny SD1.5-shaped model, each built from a good one, with the words the user
must see for it: the cases every command that loads adapters (fuse, generate, eval) is tested on."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from diffalign.models.lora_files import LORA_WEIGHTS

# case -> a part of the one-line message (after "LoRA <file>") that names what is wrong
MESSAGES = {
    "truncated": "is not a safetensors file (truncated or another format",
    "pickle": "is not a safetensors file (truncated or another format",
    "empty": "holds no tensors",
    "another-model": "matches none of the model's UNet or text-encoder layers (e.g. key transformer.",
    "partly": "44 of 176 tensors match no layer of the model (e.g. key unet.",
    "sdxl": "does not fit the model: 22 of 176 tensors have another shape than their layer (e.g. unet.",
}
EARLY = ("truncated", "pickle", "empty")  # found from the file alone, before any model loads


def write_bad_loras(good: Path, sdxl: Path, root: Path) -> dict[str, Path]:
    """{case of MESSAGES: LoRA folder} built under `root` from the folders of a good SD1.5 LoRA and an SDXL one."""
    tensors = load_file(good / LORA_WEIGHTS)
    data = (good / LORA_WEIGHTS).read_bytes()
    folders = {case: root / case for case in MESSAGES}
    for folder in folders.values():
        folder.mkdir(parents=True)
    (folders["truncated"] / LORA_WEIGHTS).write_bytes(data[: len(data) // 2])
    torch.save(tensors, folders["pickle"] / LORA_WEIGHTS)  # a torch pickle under the safetensors name
    save_file({}, folders["empty"] / LORA_WEIGHTS)
    save_file({key.replace("unet.", "transformer.", 1): t for key, t in tensors.items()},
              folders["another-model"] / LORA_WEIGHTS)
    save_file({key.replace(".to_q.", ".to_query."): t for key, t in tensors.items()}, folders["partly"] / LORA_WEIGHTS)
    shutil.copy(sdxl / LORA_WEIGHTS, folders["sdxl"] / LORA_WEIGHTS)
    return folders

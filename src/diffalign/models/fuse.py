"""Merging a trained LoRA into its base model, written as a standalone diffusers pipeline folder.

On-policy rounds (sample from the tuned model, label, train again) need the tuned model as a plain
model: its own samples come from it, and the next round's reference is it. diffusers' own
`fuse_lora` adds scale * B @ A to every adapted weight; the fused pipeline then generates what
base + LoRA generates (up to float rounding) and loads anywhere, with no LoRA machinery.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..files import atomic_save, check_output_folder
from .fuse_options import FuseOptions
from .loading import DTYPES, pipeline_hub_options, resolve_source
from .lora_files import load_lora, lora_tensor_names


def fuse_lora(base: str, lora: str | Path, out: str | Path, scale: float = FuseOptions.scale,
              dtype: str = FuseOptions.dtype) -> Path:
    """Write `base` with the LoRA of `lora` (a run's output_dir or a LoRA folder) fused in, to `out`.

    A LoRA that does not fit `base` is refused (see `lora_files.load_lora`). The folder is written
    atomically (a temporary folder renamed into place) and records where it came from in `fused_from.json`.
    `dtype` "auto" is float16 where CUDA is available, float32 elsewhere (as every command's --dtype auto).
    """
    if dtype == "auto":
        dtype = "float16" if torch.cuda.is_available() else "float32"
    from diffusers import DiffusionPipeline

    lora = Path(lora)
    lora_tensor_names(lora)  # a missing, truncated or pickled file fails before the base loads
    out = Path(out)
    check_output_folder(out)
    source = resolve_source(base)
    pipe = DiffusionPipeline.from_pretrained(source, dtype=DTYPES[dtype], **pipeline_hub_options(source, "--base"))
    load_lora(pipe, lora, adapter_name="tuned")
    pipe.fuse_lora(lora_scale=scale, adapter_names=["tuned"])
    pipe.unload_lora_weights()

    def write(tmp: Path) -> Path:
        folder = tmp / out.name
        pipe.save_pretrained(folder, safe_serialization=True)
        (folder / "fused_from.json").write_text(json.dumps({"base": base, "lora": str(lora), "scale": scale}, indent=2))
        return folder

    with torch.no_grad():
        return atomic_save(out.parent, write)

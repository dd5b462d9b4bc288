"""The options of `diffalign fuse` (`models.fuse.fuse_lora` runs them): a light module, so building the command
line loads no model library."""

from __future__ import annotations

from dataclasses import dataclass

from ..config.options import MISSING, dtype_option, option, out_option


@dataclass
class FuseOptions:
    """Which LoRA to merge into which base, at what scale and precision, and where the fused pipeline goes."""

    run: str = option(MISSING, "output_dir of a LoRA training run, or a folder with pytorch_lora_weights.safetensors",
                      positional=True)
    out: str = out_option("folder for the fused pipeline (written atomically)")
    base: str | None = option(None, "base model (default: model.pretrained of the run's config.yaml)")
    scale: float = option(1.0, "LoRA scale to fuse with")
    dtype: str = dtype_option("float32", "saved")

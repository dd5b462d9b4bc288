"""What to generate with: a base pipeline, optionally a fine-tuned UNet and LoRAs at scales.

Users name a model the way they have it: a hub id, a pipeline folder (e.g. from `diffalign fuse`),
the output_dir of a `diffalign train` run (LoRA or full fine-tuning) or a bare LoRA folder. This
module turns each into one `ModelSpec` that `sampling.generate.load_pipeline` can load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..models.lora_files import LORA_WEIGHTS as LORA_FILE
from ..models.lora_files import lora_tensor_names


@dataclass
class ModelSpec:
    """A model to generate with: `pipeline` (hub id or folder) + an optional `unet` folder + `loras`."""

    name: str
    pipeline: str
    unet: str | None = None
    loras: list[tuple[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict:
        """The JSON form recorded in metadata and results (paths as given)."""
        return {
            "name": self.name,
            "model": self.pipeline,
            "unet": self.unet,
            "loras": [{"path": path, "scale": scale} for path, scale in self.loras],
        }


def parse_lora(text: str) -> tuple[str, float]:
    """`PATH` or `PATH@SCALE` -> (path, scale); the scale defaults to 1."""
    path, sep, scale = text.rpartition("@")
    if not sep:
        return text, 1.0
    try:
        return path, float(scale)
    except ValueError:
        raise ValueError(f"--lora {text!r}: expected PATH or PATH@SCALE with a number as SCALE") from None


def run_base_model(run: Path) -> str | None:
    """The `model.pretrained` of a training run's `config.yaml`, or None when the folder has no config."""
    config = run / "config.yaml"
    if not config.is_file():
        return None
    from ..config.core import load_config
    from ..config.schema import RunConfig

    return load_config(RunConfig, config).model.pretrained


def resolve_model(
    source: str, base: str | None = None, name: str | None = None, loras: Sequence[tuple[str, float]] = ()
) -> ModelSpec:
    """The ModelSpec of `source`, with extra `loras` on top.

    - a pipeline folder (`model_index.json`) or a hub id: generated as is;
    - a LoRA run or LoRA folder (`pytorch_lora_weights.safetensors`): its adapter at scale 1 on `base`
      (default: the run's `model.pretrained`);
    - a full fine-tuning run (`unet/config.json` without `model_index.json`): its UNet in `base`.
    A source may carry `@SCALE` for its LoRA (`out/run@0.5`).
    """
    path_text, scale = parse_lora(source) if "@" in source else (source, 1.0)
    path = Path(path_text).expanduser()
    label = name or (path.name if path.exists() else path_text)
    if path.is_dir() and not (path / "model_index.json").is_file():
        is_lora = (path / LORA_FILE).is_file()
        is_full = (path / "unet" / "config.json").is_file()
        if not (is_lora or is_full):
            raise FileNotFoundError(
                f"{path} is neither a pipeline folder (model_index.json), a LoRA folder ({LORA_FILE}) nor a "
                "full fine-tuning run (unet/config.json)"
            )
        pipeline = base or run_base_model(path)
        if pipeline is None:
            raise FileNotFoundError(f"{path / 'config.yaml'} not found: give --base MODEL for a folder without a run config")
        if is_lora:
            return checked(ModelSpec(label, pipeline, None, [(str(path), scale), *loras]))
        return checked(ModelSpec(label, pipeline, str(path / "unet"), list(loras)))
    if "@" in source:
        raise ValueError(f"{source!r}: @SCALE applies to a LoRA folder or run, not to {path_text}")
    return checked(ModelSpec(label, path_text, None, list(loras)))


def checked(spec: ModelSpec) -> ModelSpec:
    """`spec`, once each of its LoRA files is found to be a whole safetensors file with tensors (read from
    the header alone, so that a bad file fails before any image is drawn; whether it fits the model is
    checked when it loads)."""
    for path, _ in spec.loras:
        lora_tensor_names(path)
    return spec


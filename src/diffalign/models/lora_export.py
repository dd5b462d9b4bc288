"""Exporting a trained LoRA for other tools: kohya's layout (what AUTOMATIC1111, ComfyUI and kohya-format
loaders read) or a diffusers-layout copy that records its alpha.

A run writes its adapter in peft's naming with its rank and alpha in diffusers' metadata (runs saved before that
have the alpha only in their `config.yaml`). The export takes the alpha the run trained with, writes it into every
kohya `.alpha` entry (kohya scales each layer by alpha / rank) or into diffusers' adapter metadata, and records
in the safetensors header what kohya loaders show (`ss_network_module`, `ss_network_dim`, `ss_network_alpha`,
the base model). The key renaming is diffusers' own `convert_state_dict_to_kohya`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config.options import MISSING, option, out_option
from ..files import atomic_write, check_output_file, give_usual_permissions
from .lora_files import LORA_WEIGHTS, RUN_CONFIG, read_lora, trained_alpha

if TYPE_CHECKING:
    import torch

FORMATS = {
    "kohya": "AUTOMATIC1111, ComfyUI and kohya-format loaders",
    "diffusers": "diffusers' load_lora_weights, with the alpha in its metadata",
}
FULL_UNET = "unet"  # the folder a full fine-tuning run writes its UNet to
FULL_CHECKPOINT_WEIGHTS = "trainable.safetensors"  # what a checkpoint holds its trainable weights in
_FACTORS = (".lora_A.weight", ".lora_B.weight")


@dataclass(frozen=True)
class LoraSource:
    """A LoRA to export: its file, tensors (peft naming, `unet.`-prefixed), alpha and where that came from,
    and the base model it was trained on (None when unknown)."""

    file: Path
    tensors: dict[str, torch.Tensor]
    rank: int
    alpha: float
    alpha_from: str
    base: str | None
    name: str


def _lora_weights_file(path: Path) -> Path:
    """The LoRA file of a run, checkpoint or LoRA folder (or the file itself); a one-line error naming `path` for a
    full fine-tuning run or checkpoint, or a folder without a LoRA."""
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: give a `diffalign train` LoRA run folder, one of its checkpoints or a LoRA folder"
        )
    if path.is_file():
        return path
    if (path / LORA_WEIGHTS).is_file():
        return path / LORA_WEIGHTS
    if (path / FULL_UNET / "config.json").is_file():
        raise ValueError(
            f"{path} is a full fine-tuning run, not a LoRA: its fine-tuned UNet is {path / FULL_UNET} (a diffusers "
            "model folder, UNet2DConditionModel.from_pretrained); there is no LoRA to export"
        )
    if (path / FULL_CHECKPOINT_WEIGHTS).is_file():
        raise ValueError(
            f"{path} is a checkpoint of a full fine-tuning run, not a LoRA: its UNet weights are "
            f"{path / FULL_CHECKPOINT_WEIGHTS} (the finished run writes its UNet to RUN/{FULL_UNET}); there is no LoRA "
            "to export"
        )
    raise FileNotFoundError(
        f"{path} holds no LoRA ({LORA_WEIGHTS} not found): give a `diffalign train` LoRA run folder, one of its "
        "checkpoints or a LoRA folder"
    )


def _export_name(path: Path, file: Path) -> str:
    """The name an export is saved under: the run's, `RUN-step-N` for a checkpoint, the file's stem for a file."""
    if path.is_file():
        return file.stem
    if path.resolve().parent.name == "checkpoints":
        return f"{path.resolve().parent.parent.name}-{path.name}"
    return path.resolve().name


def _run_settings(folder: Path) -> tuple[float | None, str | None]:
    """(lora.alpha, model.pretrained) of the run config in `folder`, or (None, None) without one."""
    config = folder / RUN_CONFIG
    if not config.is_file():
        return None, None
    from ..config.core import load_config
    from ..config.schema import RunConfig

    cfg = load_config(RunConfig, config)
    return (cfg.lora.alpha if cfg.lora.enabled else None), cfg.model.pretrained


def read_lora_source(path: str | Path) -> LoraSource:
    """The LoRA of a `diffalign train` run folder, one of its checkpoints, a LoRA folder or a LoRA file, with the
    alpha it was trained with: from the file's diffusers metadata, else the run's `config.yaml`, else the rank
    (diffusers' reading of a file without alpha)."""
    path = Path(path).expanduser()
    file = _lora_weights_file(path)
    tensors = read_lora(file)
    odd = next((key for key in tensors if not (key.startswith("unet.") and key.endswith(_FACTORS))), None)
    if odd is not None:
        raise ValueError(
            f"LoRA {file} is not a UNet LoRA in peft's naming as `diffalign train` writes it (e.g. key {odd}): "
            "only such files are exported"
        )
    ranks = {tensor.shape[0] for key, tensor in tensors.items() if key.endswith(".lora_A.weight")}
    if len(ranks) != 1:
        raise ValueError(f"LoRA {file} mixes ranks {sorted(ranks)}: only a LoRA of one rank is exported")
    rank = ranks.pop()
    _, base = _run_settings(file.parent)
    alpha, alpha_from = trained_alpha(file)
    if alpha is None:
        alpha, alpha_from = float(rank), "the rank (no run config.yaml beside the file)"
    return LoraSource(file, tensors, rank, float(alpha), alpha_from, base, _export_name(path, file))


def _base_model_version(base: str) -> str | None:
    """kohya's `ss_base_model_version` of `base` (sd_v1, sd_v2, sdxl_base_v1-0), read from its UNet config in a
    local folder or the hub cache; None when that config is not at hand (nothing is downloaded)."""
    from diffusers import UNet2DConditionModel

    from .loading import model_family, resolve_source

    try:
        config = UNet2DConditionModel.load_config(resolve_source(base), subfolder="unet", local_files_only=True)
    except (OSError, ValueError):
        return None
    if model_family(config) == "sdxl":
        return "sdxl_base_v1-0"
    return "sd_v2" if config.get("use_linear_projection") else "sd_v1"


def kohya_metadata(source: LoraSource) -> dict[str, str]:
    """The safetensors header entries kohya loaders read: network module, dim (rank), alpha and the base model."""
    metadata = {
        "format": "pt",
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(source.rank),
        "ss_network_alpha": str(source.alpha),
        "ss_output_name": source.name,
    }
    if source.base is not None:
        metadata["ss_sd_model_name"] = source.base
        if (version := _base_model_version(source.base)) is not None:
            metadata["ss_base_model_version"] = version
            metadata["ss_v2"] = str(version == "sd_v2")
    return metadata


def to_kohya(source: LoraSource) -> dict[str, torch.Tensor]:
    """The LoRA in kohya's layout: `lora_unet_<module>.lora_down/lora_up.weight` (diffusers' renaming) and a
    `<module>.alpha` scalar per layer holding the trained alpha."""
    import torch
    from diffusers.utils import convert_state_dict_to_kohya

    converted = convert_state_dict_to_kohya(source.tensors)
    alpha = torch.tensor(source.alpha, dtype=torch.float32)
    return {key: alpha.clone() if key.endswith(".alpha") else tensor.contiguous() for key, tensor in converted.items()}


def default_output(source: LoraSource, fmt: str) -> Path:
    """Where an export goes without --out: beside the LoRA file, named for the run (`RUN/RUNNAME-kohya.safetensors`)."""
    return source.file.parent / f"{source.name}-{fmt}.safetensors"


def _write_diffusers(source: LoraSource, out: Path) -> None:
    """The LoRA in diffusers' layout, with the adapter config (rank, alpha, target modules) in its metadata."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils.peft_utils import get_peft_kwargs

    layers = {key.removeprefix("unet."): tensor for key, tensor in source.tensors.items()}
    ranks = {key: tensor.shape[1] for key, tensor in layers.items() if key.endswith(".lora_B.weight")}
    config = get_peft_kwargs(ranks, {"unet": source.alpha}, layers)
    StableDiffusionPipeline.save_lora_weights(
        out.parent, unet_lora_layers=layers, weight_name=out.name, safe_serialization=True,
        unet_lora_adapter_metadata=config,
    )
    give_usual_permissions(out)  # safetensors writes 0600 files


@dataclass
class ExportOptions:
    """The options of `diffalign export`: which LoRA, in which layout, to which file."""

    run: str = option(MISSING, "a LoRA run's output_dir, one of its checkpoints, or a folder with "
                      "pytorch_lora_weights.safetensors", positional=True)
    format: str = option("kohya", "kohya (AUTOMATIC1111, ComfyUI) or diffusers")
    out: str | None = out_option("the .safetensors file to write (default: RUN/RUNNAME-FORMAT.safetensors)",
                                 default=None)


def export_lora(path: str | Path, fmt: str = ExportOptions.format, out: str | Path | None = None) -> tuple[Path, LoraSource]:
    """Write the LoRA of `path` (see `read_lora_source`) in format `fmt` (kohya or diffusers) to `out` (default:
    `default_output`); return the file written and what was read."""
    if fmt not in FORMATS:
        choices = "; ".join(f"{name} ({use})" for name, use in FORMATS.items())
        raise ValueError(f"unknown --format {fmt!r} for exporting {path}: choose {choices}")
    source = read_lora_source(path)
    out = check_output_file(default_output(source, fmt) if out is None else Path(out).expanduser())
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out}: a LoRA is written as safetensors, give a file ending in .safetensors")
    if out.resolve() == source.file.resolve():
        raise ValueError(f"--out {out} is the LoRA being exported: give another file")
    if fmt == "diffusers":
        _write_diffusers(source, out)
    else:
        from safetensors.torch import save

        data = save(to_kohya(source), metadata=kohya_metadata(source))
        atomic_write(out, lambda file: file.write(data))
    return out, source

"""LoRA files: where one is, reading it (safetensors only, never a pickle), and loading it into a pipeline
only when every tensor fits a layer of the model.

diffusers' `load_lora_weights` skips the tensors whose layer the model lacks with at most a log line, and
takes a file made for another model as an empty adapter: `generate`, `eval` or `fuse` would then run the
base model, or part of the LoRA, and say nothing. Every command that applies a LoRA goes through
`load_lora`, which refuses such a file with a message naming it and a tensor at fault.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
ADAPTABLE = ("unet", "text_encoder", "text_encoder_2")  # the pipeline components a LoRA file may adapt
# The two factors of a low-rank update in the namings diffusers reads: peft's, diffusers' and its text encoders'.
DOWN = (".lora_A.weight", ".lora.down.weight", ".lora_linear_layer.down.weight")
UP = (".lora_B.weight", ".lora.up.weight", ".lora_linear_layer.up.weight")


def lora_file(path: str | Path) -> Path:
    """The weights file of a LoRA given as a run or LoRA folder (its `pytorch_lora_weights.safetensors`) or
    as the file itself; FileNotFoundError when there is none."""
    path = Path(path).expanduser()
    file = path / LORA_WEIGHTS if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"{file} not found: give a `diffalign train` LoRA run, a LoRA folder or a LoRA .safetensors file"
        )
    return file


def _not_safetensors(file: Path) -> ValueError:
    return ValueError(
        f"LoRA {file} is not a safetensors file (truncated or another format; a .bin/.pt pickle is never "
        "loaded: convert it to safetensors)"
    )


def lora_tensor_names(path: str | Path) -> list[str]:
    """The tensor names of the LoRA file of `path`, read from its safetensors header alone: the quick check
    (it exists, is a whole safetensors file, holds tensors) a command makes before any slow work."""
    file = lora_file(path)
    try:
        with safe_open(file, framework="pt") as weights:
            names = list(weights.keys())
    except SafetensorError:
        raise _not_safetensors(file) from None
    if not names:
        raise ValueError(f"LoRA {file} holds no tensors: not a LoRA")
    return names


def read_lora(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of the LoRA file of `path` (see `lora_file`), read with safetensors."""
    from safetensors.torch import load_file

    file = lora_file(path)
    try:
        tensors = load_file(file)
    except SafetensorError:
        raise _not_safetensors(file) from None
    if not tensors:
        raise ValueError(f"LoRA {file} holds no tensors: not a LoRA")
    return tensors


def _peft_names(name: str, keys: list[str], component: torch.nn.Module) -> dict[str, str]:
    """{key inside `component` in peft's naming: key in the file} for the file keys of component `name`,
    renamed as diffusers renames them when it loads them."""
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft, convert_unet_state_dict_to_peft

    names = {key.removeprefix(f"{name}."): key for key in keys}
    try:
        if name == "unet":
            return names if "lora_A" in next(iter(names)) else convert_unet_state_dict_to_peft(names)
        names = convert_state_dict_to_peft(convert_state_dict_to_diffusers(names))
    except ValueError:  # a naming diffusers cannot place: the keys stay as they are and match nothing
        return names
    if not hasattr(component, "text_model"):
        names = {key.removeprefix("text_model."): original for key, original in names.items()}
    return names


def _unfit_shape(tensor: torch.Tensor, key: str, layer: torch.nn.Module) -> str | None:
    """Why the factor `key` cannot adapt `layer` (its input or output width differs), or None when it fits."""
    weight = getattr(layer, "weight", None)
    if weight is None or weight.ndim < 2 or tensor.ndim < 2:
        return None
    if key.endswith(DOWN) and tensor.shape[1] != weight.shape[1]:
        return f"has shape {list(tensor.shape)} but its layer takes {weight.shape[1]} input features"
    if key.endswith(UP) and tensor.shape[0] != weight.shape[0]:
        return f"has shape {list(tensor.shape)} but its layer gives {weight.shape[0]} output features"
    return None


def check_fit(
    file: Path, state_dict: Mapping[str, torch.Tensor], components: Mapping[str, torch.nn.Module]
) -> dict[tuple[str, str], str]:
    """{(component, key inside it in peft's naming): key in the file} of the LoRA tensors of `state_dict` (as
    diffusers' `lora_state_dict` returns them); ValueError naming `file` when a tensor names no layer of
    `components` or has another shape than its layer."""
    unmatched = [key for key in state_dict if key.partition(".")[0] not in components]
    misshapen, placed = [], {}
    for name, component in components.items():
        keys = [key for key in state_dict if key.startswith(f"{name}.")]
        for peft_key, key in (_peft_names(name, keys, component) if keys else {}).items():
            module_path, lora, _ = peft_key.partition(".lora")
            try:
                layer = component.get_submodule(module_path) if module_path and lora else None
            except AttributeError:
                layer = None
            if layer is None:
                unmatched.append(key)
            elif (why := _unfit_shape(state_dict[key], peft_key, layer)) is not None:
                misshapen.append(f"{key} {why}")
            else:
                placed[(name, peft_key)] = key
    total = len(state_dict)
    if len(unmatched) == total:
        raise ValueError(
            f"LoRA {file} matches none of the model's UNet or text-encoder layers (e.g. key {unmatched[0]}); "
            "made for another model?"
        )
    if unmatched:
        raise ValueError(
            f"LoRA {file}: {len(unmatched)} of {total} tensors match no layer of the model (e.g. key "
            f"{unmatched[0]}); made for another model or another version of it?"
        )
    if misshapen:
        raise ValueError(
            f"LoRA {file} does not fit the model: {len(misshapen)} of {total} tensors have another shape than "
            f"their layer (e.g. {misshapen[0]}); made for another architecture (SD1.5, SD2.1, SDXL)?"
        )
    return placed


def check_loaded(
    file: Path, state_dict: Mapping[str, torch.Tensor], placed: Mapping[tuple[str, str], str],
    components: Mapping[str, torch.nn.Module], adapter_name: str,
) -> None:
    """ValueError naming `file` unless peft now holds, for adapter `adapter_name`, each tensor of the file at
    the key `check_fit` placed it (same values, in the model's dtype) and nothing else."""
    import torch
    from peft.utils import get_peft_model_state_dict

    loaded = {}
    for name, component in components.items():
        if adapter_name in getattr(component, "peft_config", {}):
            held = get_peft_model_state_dict(component, adapter_name=adapter_name)
            loaded.update({(name, key): tensor for key, tensor in held.items()})
    dropped = [
        key for place, key in placed.items()
        if place not in loaded or not torch.equal(loaded[place], state_dict[key].to(loaded[place]))
    ]
    if dropped:
        raise ValueError(
            f"LoRA {file}: {len(dropped)} of {len(placed)} tensors were not loaded into the model (e.g. key "
            f"{dropped[0]}; diffusers reads each file in one naming: a file that mixes two loses some)"
        )
    if lacking := sorted(set(loaded) - set(placed)):
        name, key = lacking[0]
        raise ValueError(
            f"LoRA {file} is incomplete: {len(lacking)} tensors of the layers it adapts are not in the file "
            f"(e.g. {name}.{key})"
        )


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Silence diffusers' and peft's logs and warnings while loading: a LoRA of the UNet alone has no
    text-encoder keys (no news), and what does not load `load_lora` reports in its own error."""
    logger = logging.getLogger("diffusers")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=RuntimeWarning, module="peft")
            yield
    finally:
        logger.setLevel(level)


def _fit(
    file: Path, tensors: dict[str, torch.Tensor], pipeline_class: type, components: Mapping[str, torch.nn.Module]
) -> tuple[dict[str, torch.Tensor], dict[tuple[str, str], str]]:
    """The file's tensors as diffusers names them for `pipeline_class` (its renaming of other trainers'
    keys, with the arguments its load_lora_weights passes) and where `check_fit` places them."""
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin

    sdxl = issubclass(pipeline_class, StableDiffusionXLLoraLoaderMixin)
    extra = {"unet_config": components["unet"].config} if sdxl else {}
    state_dict, _ = pipeline_class.lora_state_dict(dict(tensors), **extra)
    return state_dict, check_fit(file, state_dict, components)


def check_lora_fits(pipeline: str, loras: Sequence[str | Path], unet: str | Path | None = None) -> None:
    """Refuse, as `load_lora` would, a LoRA of `loras` that does not fit `pipeline` (a hub id or folder; `unet`:
    a fine-tuned UNet folder that replaces its own), checked against its UNet and text encoders built from
    their configs on the meta device: no model weights are read, so a command checks all before slow work."""
    import importlib

    import diffusers
    from accelerate import init_empty_weights

    from .loading import resolve_source

    source = resolve_source(pipeline)
    index = diffusers.DiffusionPipeline.load_config(source)
    components = {}
    with init_empty_weights():
        for name in ADAPTABLE:
            library, class_name = (index.get(name) or [None, None])[:2]
            if library is None or class_name is None:
                continue
            model_class = getattr(importlib.import_module(library), class_name)
            if library == "transformers":
                from transformers import AutoConfig

                components[name] = model_class(AutoConfig.from_pretrained(source, subfolder=name))
            elif name == "unet" and unet is not None:
                components[name] = model_class.from_config(model_class.load_config(unet))
            else:
                components[name] = model_class.from_config(model_class.load_config(source, subfolder=name))
    for path in loras:
        file = lora_file(path)
        _fit(file, read_lora(file), getattr(diffusers, index["_class_name"]), components)


RUN_CONFIG = "config.yaml"  # a `diffalign train` run's config, beside its LoRA file


def recorded_alpha(file: Path) -> float | None:
    """The UNet LoRA alpha that diffusers' adapter metadata in `file` records (what `save_lora` and the diffusers
    export write), or None."""
    import json

    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY

    with safe_open(file, framework="pt") as weights:
        recorded = (weights.metadata() or {}).get(LORA_ADAPTER_METADATA_KEY)
    alpha = json.loads(recorded).get("unet.lora_alpha") if recorded else None
    return None if alpha is None else float(alpha)


def run_alpha(folder: Path) -> float | None:
    """`lora.alpha` of the `diffalign train` run config in `folder`, or None (no run config, or no LoRA)."""
    config = folder / RUN_CONFIG
    if not config.is_file():
        return None
    from ..config.core import load_config
    from ..config.schema import RunConfig

    cfg = load_config(RunConfig, config)
    return cfg.lora.alpha if cfg.lora.enabled else None


def trained_alpha(file: Path) -> tuple[float | None, str]:
    """The alpha the LoRA of `file` was trained with, and where it was read: diffusers' adapter metadata in the
    file, else `lora.alpha` of the run's config.yaml beside it; (None, "") when neither says (diffusers then
    takes alpha = rank)."""
    if (alpha := recorded_alpha(file)) is not None:
        return alpha, f"the metadata of {file}"
    if (alpha := run_alpha(file.parent)) is not None:
        return float(alpha), f"lora.alpha of {file.parent / RUN_CONFIG}"
    return None, ""


def with_alpha_folded(file: Path, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`tensors` with each peft-named layer's up factor (`lora_B`) scaled by alpha / the layer's rank, so that a
    loader taking alpha = rank (diffusers given tensors, which carry no metadata) applies the trained strength.
    Runs saved before `save_lora` recorded the alpha have it only in their config.yaml."""
    alpha, _ = trained_alpha(file)
    if alpha is None:
        return tensors
    folded = dict(tensors)
    for key, tensor in tensors.items():
        if key.endswith(".lora_B.weight"):
            rank = tensor.shape[1]
            if alpha != rank:
                folded[key] = tensor * (alpha / rank)
    return folded


def load_lora(pipe: DiffusionPipeline, path: str | Path, adapter_name: str) -> None:
    """Load the LoRA of `path` (a run or LoRA folder, or the file) into `pipe` as adapter `adapter_name`
    with diffusers' `load_lora_weights`, at the alpha it was trained with (`with_alpha_folded`); ValueError naming the file and a tensor when its tensors do not
    all fit a layer of the pipeline's UNet or text encoders, or when peft does not then hold them all."""
    file = lora_file(path)
    tensors = with_alpha_folded(file, read_lora(file))
    components = {name: getattr(pipe, name) for name in ADAPTABLE if getattr(pipe, name, None) is not None}
    state_dict, placed = _fit(file, tensors, type(pipe), components)
    try:
        with _quiet_loading():
            pipe.load_lora_weights(tensors, adapter_name=adapter_name)
    except (ValueError, RuntimeError) as error:  # e.g. peft cannot adapt a layer of that type
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"LoRA {file} does not load into the model: {reason}") from error
    check_loaded(file, state_dict, placed, components, adapter_name)

"""Loading the parts of SD1.5, SD2.1 and SDXL pipelines from a hub id or a local diffusers folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ..config.schema import ModelConfig
from ..paths import looks_local, resolve_local
from .hub_access import local_files_only

Family = Literal["sd", "sdxl"]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class DiffusionParts:
    """The components a trainer needs, plus what kind of model they form."""

    unet: UNet2DConditionModel | None
    vae: AutoencoderKL | None
    text_encoders: list[torch.nn.Module]
    tokenizers: list[CLIPTokenizer]
    noise_scheduler: DDPMScheduler
    family: Family
    prediction_type: str
    source: str
    extras: dict = field(default_factory=dict)

    @property
    def vae_config(self) -> dict:
        """The VAE's config (scaling and shift factors), also when a latent cache stands in for the VAE."""
        return dict(self.vae.config) if self.vae is not None else self.extras["vae_config"]


def resolve_source(pretrained: str) -> str:
    """A local folder (as given or under the project root) or the hub id unchanged.

    A string that can only be a path (starts with ./ or /, has several slashes...) and does not
    exist is an error here rather than a confusing hub lookup later.
    """
    local = resolve_local(pretrained)
    if local is not None:
        if not (local / "model_index.json").exists() and not (local / "unet").is_dir():
            raise FileNotFoundError(
                f"model folder {local} is not a diffusers pipeline folder (no model_index.json or unet/)"
            )
        return str(local)
    if looks_local(pretrained):
        raise FileNotFoundError(
            f"model {pretrained!r} not found: no such folder (a hub id looks like 'org/name')"
        )
    return pretrained


def pipeline_hub_options(pretrained: str, key: str) -> dict[str, bool]:
    """`from_pretrained` options for a whole pipeline: for a hub id, one quick look at the hub first (see
    `hub_access`), so that an unreachable hub or a missing repository is a one-line error naming `key`, and
    a cached copy loads from the cache alone; nothing for a local folder."""
    if resolve_local(pretrained) is not None:
        return {}
    return {"local_files_only": local_files_only(pretrained, None, key, "model_index.json")}


def model_family(unet: UNet2DConditionModel | dict) -> Family:
    """'sdxl' for UNets (or UNet configs) with SDXL's text_time micro-conditioning, else 'sd' (SD1.x/2.x)."""
    config = unet if isinstance(unet, dict) else unet.config
    return "sdxl" if config.get("addition_embed_type") == "text_time" else "sd"


def _vae_source(vae: str) -> str:
    local = resolve_local(vae)
    return resolve_source(vae) if local is None else str(local)


def _vae_offline(vae: str) -> bool:
    """Whether a separate VAE (`model.vae`) must come from the local hub cache alone (see `hub_access`)."""
    return resolve_local(vae) is None and local_files_only(_vae_source(vae), None, "model.vae", "config.json")


def _prediction_type(cfg: ModelConfig, scheduler: DDPMScheduler) -> str:
    """`cfg.prediction_type`, or the scheduler's for 'auto'; the scheduler is set to match."""
    prediction_type = scheduler.config.prediction_type if cfg.prediction_type == "auto" else cfg.prediction_type
    if prediction_type != scheduler.config.prediction_type:
        scheduler.register_to_config(prediction_type=prediction_type)
    return prediction_type


def load_parts(
    cfg: ModelConfig, *, trainable_dtype: torch.dtype = torch.float32, encoders: bool = True, unet: bool = True
) -> DiffusionParts:
    """Load UNet, VAE, text encoder(s), tokenizer(s) and the training noise scheduler of a pipeline.

    The UNet is loaded in `trainable_dtype` (the caller casts it for LoRA), the VAE and text
    encoders in `cfg.frozen_dtype`, frozen and in eval mode. SDXL gets both text encoders. With
    `encoders=False` (a latent and text cache stands in for them) neither the VAE nor the text
    encoders are loaded, only the VAE's config (`parts.vae_config`); with `unet=False` (building
    that cache) only the UNet's config is read and `parts.unet` is None.
    """
    source = resolve_source(cfg.pretrained)
    # a hub id is looked up once, without retries (see hub_access); unreachable but cached: the cache alone
    offline = resolve_local(cfg.pretrained) is None and local_files_only(
        source, cfg.revision, "model.pretrained", "unet/config.json")
    files = dict(revision=cfg.revision, local_files_only=offline)
    common = dict(files, variant=cfg.variant)
    vae_files = dict(local_files_only=_vae_offline(cfg.vae)) if cfg.vae else {}
    frozen = DTYPES[cfg.frozen_dtype]
    if unet:
        model = UNet2DConditionModel.from_pretrained(source, subfolder="unet", dtype=trainable_dtype, **common)
        family = model_family(model)
    else:
        model = None
        family = model_family(dict(UNet2DConditionModel.load_config(source, subfolder="unet", **files)))
    if not encoders:
        scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **files)
        prediction_type = _prediction_type(cfg, scheduler)
        vae_config = (
            AutoencoderKL.load_config(_vae_source(cfg.vae), **vae_files)
            if cfg.vae
            else AutoencoderKL.load_config(source, subfolder="vae", **files)
        )
        return DiffusionParts(
            model, None, [], [], scheduler, family, prediction_type, source, {"vae_config": dict(vae_config)}
        )
    if cfg.vae:
        vae = AutoencoderKL.from_pretrained(_vae_source(cfg.vae), dtype=frozen, **vae_files)
    else:
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", dtype=frozen, **common)
    tokenizers = [CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **files)]
    text_encoders: list[torch.nn.Module] = [
        CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=frozen, **common)
    ]
    if family == "sdxl":
        tokenizers.append(CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2", **files))
        text_encoders.append(
            CLIPTextModelWithProjection.from_pretrained(source, subfolder="text_encoder_2", dtype=frozen, **common)
        )
    scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **files)
    prediction_type = _prediction_type(cfg, scheduler)
    for module in (vae, *text_encoders):
        module.requires_grad_(False).eval()
    return DiffusionParts(
        unet=model,
        vae=vae,
        text_encoders=text_encoders,
        tokenizers=tokenizers,
        noise_scheduler=scheduler,
        family=family,
        prediction_type=prediction_type,
        source=source,
    )

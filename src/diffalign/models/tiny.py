"""Tiny Stable-Diffusion-shaped components: the embedded demo model and test replicas of SD1.5/SD2.1/SDXL.

The architectures are the real diffusers/transformers classes (UNet2DConditionModel, AutoencoderKL,
CLIPTextModel[WithProjection]) at toy widths, and the tokenizer is the real CLIP BPE tokenizer,
derived offline from the vocabulary file that open_clip ships. A pipeline folder written by
`save_tiny_pipeline` loads with stock `StableDiffusionPipeline` / `StableDiffusionXLPipeline`.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

Family = Literal["sd15", "sd21-v", "sdxl"]

TEXT_WIDTH = 32
# The noise schedule of SD1.5/SD2.1/SDXL.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="leading",
)


def clip_bpe_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """The CLIP BPE tokenizer (49,408 ids) built offline from open_clip's `bpe_simple_vocab_16e6.txt.gz`.

    Ids equal `open_clip.tokenize` on ordinary prompts (open_clip additionally runs ftfy and HTML
    unescaping, which only matters for mojibake, entities and typographic quotes). `pad_token="!"`
    gives the SD2/SDXL `tokenizer_2` convention.
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
        # transformers 5 ignores vocab_file/merges_file kwargs in the constructor; from_pretrained reads them.
        return CLIPTokenizer.from_pretrained(
            tmp,
            model_max_length=77,
            bos_token="<|startoftext|>",
            eos_token="<|endoftext|>",
            unk_token="<|endoftext|>",
            pad_token=pad_token,
        )


def tiny_text_encoder(with_projection: bool = False, seed: int = 0) -> CLIPTextModel:
    """A 2-layer CLIP text encoder of width 32 over the full CLIP vocabulary (about 1.6 M parameters)."""
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=TEXT_WIDTH,
        intermediate_size=4 * TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=TEXT_WIDTH,
        hidden_act="gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config)


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    """A x4 AutoencoderKL with 4 latent channels (about 0.24 M parameters)."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=32,
    )


def tiny_unet(family: Family = "sd15", sample_size: int = 8, seed: int = 0) -> UNet2DConditionModel:
    """A two-level UNet with cross-attention in both levels (about 1.5 M parameters for SD1.5 shape).

    `sdxl` adds SDXL's `text_time` conditioning (pooled text embedding + 6 micro-conditioning ids)
    and linear attention projections, and takes the two text encoders' hidden states concatenated.
    """
    kwargs: dict = dict(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    if family == "sd21-v":
        kwargs.update(use_linear_projection=True)
    if family == "sdxl":
        kwargs.update(
            cross_attention_dim=2 * TEXT_WIDTH,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + TEXT_WIDTH,
        )
    torch.manual_seed(seed)
    return UNet2DConditionModel(**kwargs)


def tiny_scheduler(family: Family = "sd15") -> DDIMScheduler:
    """A DDIM scheduler with the SD noise schedule; `v_prediction` for the SD2.1-v family."""
    prediction_type = "v_prediction" if family == "sd21-v" else "epsilon"
    return DDIMScheduler(**SCHEDULER_CONFIG, prediction_type=prediction_type)


def save_tiny_pipeline(path: str | Path, family: Family = "sd15", seed: int = 0, **parts: object) -> Path:
    """Write a loadable diffusers pipeline folder of the given family; `parts` override random components."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    path = Path(path)
    unet = parts.get("unet") or tiny_unet(family, seed=seed)
    vae = parts.get("vae") or tiny_vae(seed=seed)
    tokenizer = parts.get("tokenizer") or clip_bpe_tokenizer()
    scheduler = parts.get("scheduler") or tiny_scheduler(family)
    if family == "sdxl":
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=parts.get("text_encoder") or tiny_text_encoder(seed=seed),
            text_encoder_2=parts.get("text_encoder_2") or tiny_text_encoder(with_projection=True, seed=seed + 1),
            tokenizer=tokenizer,
            tokenizer_2=parts.get("tokenizer_2") or clip_bpe_tokenizer(pad_token="!"),
            unet=unet,
            scheduler=scheduler,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=parts.get("text_encoder") or tiny_text_encoder(seed=seed),
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.save_pretrained(path, safe_serialization=True)
    return path

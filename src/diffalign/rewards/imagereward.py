"""ImageReward (Xu et al. 2023) rebuilt from library parts, loading the published `ImageReward.pt`.

The reference package (`image-reward`) does not import on transformers 5, so the same network is
assembled here:

* vision: BLIP's ViT (ViT-L/16 at 224 for the published weights), as timm's `VisionTransformer`:
  its parameter names are BLIP's, and so is its math (no pre-norm, exact GELU, LayerNorm eps 1e-6,
  output = every token after the final norm).
* text: BLIP's "multimodal encoder", as transformers' `BlipTextModel` with cross-attention in every
  layer, called with `is_decoder=False`: bidirectional self-attention over the prompt tokens, then
  cross-attention to the image tokens. `BlipTextModel` is transformers' own port of BLIP's `med.py`
  (same parameter names, word + position embeddings only, cross-attention keys/values of width
  `encoder_hidden_size`). `BertModel` does not fit: in transformers 5 it builds cross-attention only
  when `is_decoder=True`, which also makes its self-attention causal, its cross-attention keys and
  values take `hidden_size` inputs rather than the ViT's 1024, and it adds token-type embeddings the
  checkpoint lacks. `BlipTextModel` computes attention eagerly (no SDPA); on 35 prompt tokens that
  is a small part of the cost next to the ViT, which uses `F.scaled_dot_product_attention`.
* head: `Linear(768,1024) Dropout Linear(1024,128) Dropout Linear(128,64) Dropout Linear(64,16)
  Linear(16,1)`, no activations, applied in fp32 to the [CLS] output as in the reference.

score = (head(h_CLS) - 0.16717362830052426) / 1.0333394966054072, roughly N(0, 1) over SD images.
Prompts are cut to 35 BERT tokens, as in the reference, and the [CLS] id is kept in front (the
reference does not swap in [ENC]).

The ViT's geometry (width, depth, patch and image size, MLP ratio) is read from the checkpoint's
tensor shapes; the head count is not visible in shapes and defaults to width / 64, which holds for
BLIP's base (12 heads) and large (16 heads) ViTs; pass `vision_heads` for anything else. The text
encoder's sizes come from `med_config.json`, and its cross-attention width is the ViT's width, as in
BLIP.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from huggingface_hub import hf_hub_download
from PIL import Image
from torch import nn

from .base import (
    ImageBatch,
    check_batch,
    register_scorer,
    resolve_device,
    resolve_dtype,
    to_pil_images,
)
from .heads import linear_head
from .weights import read_state_dict

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
MAX_PROMPT_TOKENS = 35
BLIP_HEAD_DIM = 64
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CHECKPOINT_FILES = ("ImageReward.safetensors", "ImageReward.pt")
HUB_CHECKPOINT = "ImageReward.pt"
MED_CONFIG = "med_config.json"
DEFAULT_REPO = "THUDM/ImageReward"

# Checkpoint key prefix -> the submodule of `ImageRewardModel` that holds it. Every other key
# (BLIP's vision_proj / text_proj, ...) plays no part in the reward and is ignored.
KEY_PREFIXES = {"blip.visual_encoder.": "vision.", "blip.text_encoder.": "text.", "mlp.": "head."}
# med.py saves position_ids (0..511) as a buffer; BlipTextModel rebuilds it.
NON_PARAMETER_KEYS = frozenset({"blip.text_encoder.embeddings.position_ids"})
_VIT = "blip.visual_encoder."


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's tensors do not fit the ImageReward architecture."""


@dataclass(frozen=True)
class VisionGeometry:
    """Sizes of a BLIP ViT: image and patch size, width, depth, heads, MLP ratio."""

    image_size: int
    patch_size: int
    width: int
    depth: int
    num_heads: int
    mlp_ratio: float


def infer_vision_geometry(state: dict[str, torch.Tensor], num_heads: int | None = None) -> VisionGeometry:
    """The ViT's geometry read from the shapes of the checkpoint's `blip.visual_encoder.*` tensors."""
    names = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight")
    needed = [_VIT + name for name in names]
    absent = [key for key in needed if key not in state]
    if absent:
        raise CheckpointMismatchError(f"the checkpoint has no ImageReward vision encoder: missing keys {absent}")
    width = state[f"{_VIT}cls_token"].shape[-1]
    patch = state[f"{_VIT}patch_embed.proj.weight"].shape[-1]
    grid = math.isqrt(state[f"{_VIT}pos_embed"].shape[1] - 1)
    if grid * grid + 1 != state[f"{_VIT}pos_embed"].shape[1]:
        raise CheckpointMismatchError(f"{_VIT}pos_embed does not hold a square grid plus a class token")
    blocks = {int(key[len(f"{_VIT}blocks.") :].split(".")[0]) for key in state if key.startswith(f"{_VIT}blocks.")}
    heads = num_heads or width // BLIP_HEAD_DIM
    if heads < 1 or width % heads:
        raise ValueError(f"vision width {width} cannot be split into {heads} heads; pass vision_heads")
    mlp_ratio = state[f"{_VIT}blocks.0.mlp.fc1.weight"].shape[0] / width
    return VisionGeometry(grid * patch, patch, width, max(blocks) + 1, heads, mlp_ratio)


class RewardHead(nn.Module):
    """ImageReward's MLP: five linear layers, dropout after the first three, no activations."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.layers = linear_head((width, 1024, 128, 64, 16, 1), (0.2, 0.2, 0.1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The raw reward of each feature row, shape (N,)."""
        return self.layers(features).squeeze(-1)


class ImageRewardModel(nn.Module):
    """BLIP ViT -> BLIP multimodal text encoder -> reward head, returning standardised rewards."""

    def __init__(self, vision: VisionGeometry, med_config: dict, special_ids: dict[str, int | None]) -> None:
        super().__init__()
        # Imported here so that registering the scorer does not import timm and transformers.
        from timm.models.vision_transformer import VisionTransformer
        from transformers import BlipTextConfig, BlipTextModel

        self.vision = VisionTransformer(
            img_size=vision.image_size, patch_size=vision.patch_size, embed_dim=vision.width,
            depth=vision.depth, num_heads=vision.num_heads, mlp_ratio=vision.mlp_ratio, qkv_bias=True,
            class_token=True, num_classes=0, pre_norm=False, final_norm=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), act_layer=nn.GELU, weight_init="skip",
        )
        text_config = BlipTextConfig(
            vocab_size=med_config["vocab_size"], hidden_size=med_config["hidden_size"],
            encoder_hidden_size=vision.width, intermediate_size=med_config["intermediate_size"],
            num_hidden_layers=med_config["num_hidden_layers"], num_attention_heads=med_config["num_attention_heads"],
            max_position_embeddings=med_config["max_position_embeddings"],
            hidden_act=med_config.get("hidden_act", "gelu"), layer_norm_eps=med_config.get("layer_norm_eps", 1e-12),
            hidden_dropout_prob=med_config.get("hidden_dropout_prob", 0.0),
            attention_probs_dropout_prob=med_config.get("attention_probs_dropout_prob", 0.0),
            pad_token_id=med_config.get("pad_token_id", 0),
            # BlipTextModel builds the cross-attention layers when is_decoder is set; forward() is then
            # called with is_decoder=False, which keeps the self-attention bidirectional.
            is_decoder=bool(med_config.get("add_cross_attention", True)), use_cache=False,
            **special_ids,
        )
        self.text = BlipTextModel(text_config, add_pooling_layer=False)
        self.head = RewardHead(text_config.hidden_size)

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Standardised rewards (N,), float32, of normalised pixels (N, 3, S, S) against token ids (N, L)."""
        image_tokens = self.vision.forward_features(pixels)
        text = self.text(
            input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_tokens, is_decoder=False
        )
        return (self.head(text.last_hidden_state[:, 0].float()) - REWARD_MEAN) / REWARD_STD


def _looks_local(name: str) -> bool:
    return (
        os.path.exists(name)
        or name.startswith(("/", "./", "../", "~"))
        or name.count("/") > 1
        or name.endswith((".pt", ".pth", ".bin", ".safetensors"))
    )


def _hub_file(repo: str, filename: str) -> Path:
    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename))
    except (OSError, ValueError) as err:  # hub HTTP errors and "not in the local cache" are OSErrors
        raise FileNotFoundError(
            f"could not get {filename} from the Hugging Face hub repo {repo!r} ({type(err).__name__}: {err}). "
            f"Offline? Download https://huggingface.co/{repo}/resolve/main/{HUB_CHECKPOINT} and "
            f"https://huggingface.co/{repo}/resolve/main/{MED_CONFIG} into one folder and pass "
            f"checkpoint='<that folder>'."
        ) from err


def resolve_checkpoint_files(checkpoint: str, med_config: str | None = None) -> tuple[Path, Path]:
    """(weights file, med_config.json) for a hub repo id, a local folder or a local weights file."""
    if not _looks_local(checkpoint):
        weights = _hub_file(checkpoint, HUB_CHECKPOINT)
        return weights, Path(med_config) if med_config else _hub_file(checkpoint, MED_CONFIG)
    where = f"https://huggingface.co/{DEFAULT_REPO}/resolve/main"
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        found = [path / name for name in CHECKPOINT_FILES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(
                f"no {' or '.join(CHECKPOINT_FILES)} in {path}: download {where}/{HUB_CHECKPOINT} into it"
            )
        weights, folder = found[0], path
    elif path.is_file():
        weights, folder = path, path.parent
    else:
        raise FileNotFoundError(
            f"ImageReward checkpoint {path} does not exist: download {where}/{HUB_CHECKPOINT} and pass its path"
        )
    config = Path(med_config).expanduser() if med_config else folder / MED_CONFIG
    if not config.is_file():
        raise FileNotFoundError(
            f"{config} does not exist: download {where}/{MED_CONFIG} next to {weights.name} or pass med_config="
        )
    return weights, config


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` file or of a torch pickle holding a plain state dict (read tensors-only)."""
    return read_state_dict(path)


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """BLIP's tokenizer: BERT uncased WordPiece plus the special tokens [DEC] (bos) and [ENC]."""
    from transformers import BertTokenizer

    if _looks_local(name) and not Path(name).expanduser().is_dir():
        raise FileNotFoundError(
            f"tokenizer folder {name} does not exist or is not a folder: it needs the vocab.txt of bert-base-uncased"
        )
    try:
        tokenizer = BertTokenizer.from_pretrained(str(Path(name).expanduser()) if _looks_local(name) else name)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"could not load the BERT tokenizer {name!r} ({type(err).__name__}: {err}). Offline? Download "
            "https://huggingface.co/bert-base-uncased/resolve/main/vocab.txt (and tokenizer_config.json) into a "
            "folder and pass tokenizer='<that folder>'."
        ) from err
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


def _listing(keys: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_checkpoint(model: ImageRewardModel, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy the checkpoint's tensors (original key names) into `model`; every parameter must be found."""
    mapped, original, ignored = {}, {}, []
    for key, tensor in state.items():
        prefix = next((p for p in KEY_PREFIXES if key.startswith(p)), None)
        if prefix is None or key in NON_PARAMETER_KEYS:
            ignored.append(key)
            continue
        name = KEY_PREFIXES[prefix] + key[len(prefix) :]
        mapped[name], original[name] = tensor, key
    reverse = {ours: theirs for theirs, ours in KEY_PREFIXES.items()}
    expected = model.state_dict().keys()
    missing = [reverse[k.split(".")[0] + "."] + k.split(".", 1)[1] for k in expected - mapped.keys()]
    unexpected = [original[k] for k in mapped.keys() - expected]
    if missing or unexpected:
        problems = [f"missing keys: {_listing(missing)}"] if missing else []
        problems += [f"unexpected keys: {_listing(unexpected)}"] if unexpected else []
        raise CheckpointMismatchError(f"{source} does not match the ImageReward architecture; " + "; ".join(problems))
    try:
        model.load_state_dict(mapped, strict=True)
    except RuntimeError as err:
        raise CheckpointMismatchError(f"{source} does not fit the architecture built from med_config: {err}") from err
    if ignored:
        logger.debug(
            "ImageReward: ignored %d checkpoint keys that the reward does not use: %s", len(ignored), _listing(ignored, 50)
        )


def _convert_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def image_transform(size: int) -> Callable[[Image.Image], torch.Tensor]:
    """ImageReward's preprocessing: Resize(size, bicubic) -> CenterCrop(size) -> RGB -> [0, 1] -> OpenAI mean/std."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(size),
        _convert_rgb,
        transforms.ToTensor(),
        transforms.Normalize(OPENAI_MEAN, OPENAI_STD),
    ])


@register_scorer("imagereward")
class ImageRewardScorer:
    """ImageReward v1.0: a BLIP-based reward model trained on 137k expert comparisons, standardised scores.

    `checkpoint` is a hub repo id (its `ImageReward.pt` and `med_config.json` are downloaded), a local
    folder holding `ImageReward.pt` or `ImageReward.safetensors` (and `med_config.json` unless
    `med_config` is given), or a weights file. `tokenizer` is a hub id or a folder with BERT's
    `vocab.txt`. See the module docstring for `vision_heads`.
    """

    name = "imagereward"
    scale = "imagereward (standardised, ~N(0,1))"
    logit_scale = 1.0

    def __init__(
        self,
        checkpoint: str = DEFAULT_REPO,
        med_config: str | None = None,
        tokenizer: str = "bert-base-uncased",
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 16,
        *,
        vision_heads: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = batch_size
        weights, config_path = resolve_checkpoint_files(str(checkpoint), med_config)
        self.tokenizer = load_tokenizer(str(tokenizer))
        med = json.loads(config_path.read_text())
        if len(self.tokenizer) > med["vocab_size"]:
            raise ValueError(
                f"the tokenizer has {len(self.tokenizer)} tokens but {config_path} says vocab_size {med['vocab_size']}"
            )
        state = load_state_file(weights)
        geometry = infer_vision_geometry(state, vision_heads)
        special = {
            "bos_token_id": self.tokenizer.bos_token_id,
            "sep_token_id": self.tokenizer.sep_token_id,
            "eos_token_id": self.tokenizer.sep_token_id,
        }
        self.model = ImageRewardModel(geometry, med, special)
        load_checkpoint(self.model, state, source=str(weights))
        self.model.eval()
        self.model.vision.to(self.device, self.dtype)
        self.model.text.to(self.device, self.dtype)
        self.model.head.to(self.device, torch.float32)
        self.preprocess = image_transform(geometry.image_size)

    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask (N, 35) of the prompts, padded and truncated as in the reference."""
        tokens = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=MAX_PROMPT_TOKENS, return_tensors="pt"
        )
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    @torch.no_grad()
    def score(self, images: ImageBatch, prompts: Sequence[str]) -> torch.Tensor:
        """The standardised ImageReward of each image for its prompt, shape (N,), float32."""
        # PIL images go to the transform in their own mode: the reference resizes before converting to RGB.
        pils = to_pil_images(images) if isinstance(images, (torch.Tensor, np.ndarray)) else list(images)
        check_batch(pils, prompts)
        rewards = [torch.zeros(0)]
        for start in range(0, len(pils), self.batch_size):
            chunk = pils[start : start + self.batch_size]
            pixels = torch.stack([self.preprocess(image) for image in chunk]).to(self.device, self.dtype)
            tokens = {k: v.to(self.device) for k, v in self.tokenize(prompts[start : start + self.batch_size]).items()}
            rewards.append(self.model(pixels, tokens["input_ids"], tokens["attention_mask"]).cpu())
        return torch.cat(rewards).float()

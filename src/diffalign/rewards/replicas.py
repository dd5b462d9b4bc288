"""Random-weight replicas of the scorers' architectures, saved in the layouts of the published checkpoints.

Offline there are no scorer weights, so tests and benchmarks build the real architectures with random
weights and save them exactly where and how the real ones are published: a transformers CLIP folder
(PickScore, CLIP score, the aesthetic predictor's backbone), an open_clip state dict under
"state_dict" in a `.pt` file (HPS), a bare linear head (aesthetic). The scorers then load them through
the same code path as the real checkpoints. `size="tiny"` is a 3.4 M-parameter CLIP with the real
structure (patch 14 at 224, 77 tokens, the 49,408-id BPE vocabulary, GELU, LayerNorm eps 1e-5);
"vit-h-14" and "vit-l-14" are the full-size backbones (986 M and 428 M parameters).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]

CLIP_SIZES = {
    # PickScore_v1 / laion CLIP-ViT-H-14-laion2B-s32B-b79K
    "vit-h-14": dict(
        projection_dim=1024,
        text=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, hidden_act="gelu"),
        vision=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, hidden_act="gelu"),
    ),
    # openai/clip-vit-large-patch14
    "vit-l-14": dict(
        projection_dim=768,
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, hidden_act="quick_gelu"),
        vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, hidden_act="quick_gelu"),
    ),
    "tiny": dict(
        projection_dim=32,
        text=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, hidden_act="gelu"),
        vision=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, hidden_act="gelu"),
    ),
}

# open_clip model configs ("ViT-H-14" is built in); the tiny one mirrors CLIP_SIZES["tiny"].
TINY_OPEN_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def clip_config(size: str) -> CLIPConfig:
    """The transformers `CLIPConfig` of a replica size ("tiny", "vit-h-14", "vit-l-14")."""
    spec = CLIP_SIZES[size]
    common = dict(layer_norm_eps=1e-5, projection_dim=spec["projection_dim"])
    return CLIPConfig(
        projection_dim=spec["projection_dim"],
        logit_scale_init_value=2.6592,
        text_config=dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=49407, **spec["text"], **common),
        vision_config=dict(image_size=224, patch_size=14, num_channels=3, **spec["vision"], **common),
    )


def clip_image_processor() -> CLIPImageProcessor:
    """The CLIP processor settings of the OpenAI and LAION repos: shortest side 224 bicubic, centre crop 224, OpenAI mean/std."""
    return CLIPImageProcessor(
        size={"shortest_edge": 224}, resample=3, do_center_crop=True, crop_size={"height": 224, "width": 224},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=OPENAI_MEAN, image_std=OPENAI_STD,
        do_convert_rgb=True,
    )


def save_clip_replica(path: str | Path, size: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """A random CLIP of `size` saved as a hub-style folder (model, tokenizer, processor): loads like PickScore_v1."""
    from ..models.tiny import clip_bpe_tokenizer

    path = Path(path)
    torch.manual_seed(seed)
    CLIPModel(clip_config(size)).to(dtype).save_pretrained(path)
    clip_bpe_tokenizer().save_pretrained(path)
    clip_image_processor().save_pretrained(path)
    return path


def save_open_clip_config(path: str | Path) -> Path:
    """The tiny open_clip model config as a JSON file; `open_clip.add_model_config(path)` registers it under its stem."""
    path = Path(path)
    path.write_text(json.dumps(TINY_OPEN_CLIP, indent=1))
    return path


def save_hps_replica(
    path: str | Path, architecture: str = "ViT-H-14", architecture_config: str | Path | None = None, seed: int = 0
) -> Path:
    """A random open_clip `architecture` saved as HPS publishes its checkpoints: {"state_dict": tensors} in a .pt file.

    `architecture_config` is a model config JSON to register first (see `save_open_clip_config`).
    """
    import open_clip

    if architecture_config is not None:
        open_clip.add_model_config(architecture_config)
    torch.manual_seed(seed)
    model = open_clip.create_model(architecture, pretrained=None)
    torch.save({"state_dict": model.state_dict()}, path)
    return Path(path)


def save_aesthetic_head(path: str | Path, width: int = 768, seed: int = 0) -> Path:
    """A random aesthetic head (`layers.{0,2,4,6,7}`) for `width`-d embeddings, saved as the .pth state dict is published."""
    from .heads import linear_head

    torch.manual_seed(seed)
    head = linear_head((width, 1024, 128, 64, 16, 1), (0.2, 0.2, 0.1))
    torch.save({f"layers.{k}": v for k, v in head.state_dict().items()}, path)
    return Path(path)

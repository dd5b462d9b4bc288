"""HPS v2 / v2.1 (Wu et al. 2023): an open_clip ViT-H/14 fine-tuned on the HPD v2 preferences.

score_i = cos(E_text(prompt_i), E_image(image_i)), both unit-norm: what `hpsv2.score()` returns
("cos", the default). The HPS benchmark tables and most papers quote 100 * cos ("100*cos"). v2.0 and
v2.1 scores are not comparable with each other (the HPS README says so), hence two names:
`hpsv2` and `hpsv2.1`.

The weights are the published checkpoint (`HPS_v2_compressed.pt` / `HPS_v2.1_compressed.pt` in the
hub repo `xswu/HPSv2`, tensors under "state_dict") on top of open_clip's `ViT-H-14` built without
pretrained weights, so the 3.9 GB LAION checkpoint that the `hpsv2` package downloads first is not
needed. Preprocessing is HPS's own "light" transform, not open_clip's: to tensor, bicubic resize of
the longest side to 224 on the tensor (antialiased), zero-pad to 224 x 224 centred, OpenAI mean/std
(`hps_transform`), run on the model's device from uint8 tensors (`hps_pixels`). Unlike the reference,
RGBA images are converted to RGB (the reference passes the alpha channel on, which the model then
rejects), and an image whose longest side is already 224 is padded to a square too (the reference
leaves it non-square, which the model rejects).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from .base import (
    ImageBatch,
    check_batch,
    register_scorer,
    resolve_device,
    resolve_dtype,
    to_uint8_tensors,
)
from .hf_clip import batches
from .weights import hub_file, read_state_dict

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CHECKPOINTS = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
SCALES = ("cos", "100*cos")
_OPEN_CLIP_PRECISION = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def hps_pixels(image: torch.Tensor, size: int = 224) -> torch.Tensor:
    """HPS's evaluation preprocessing of one uint8 (3, H, W) image tensor, on the tensor's device:
    (3, size, size), normalised with the OpenAI mean/std."""
    pixels = image.float() / 255
    height, width = pixels.shape[1:]
    scale = size / max(height, width)
    new_h, new_w = (round(height * scale), round(width * scale)) if scale != 1.0 else (height, width)
    if scale != 1.0:
        pixels = TF.resize(pixels, [new_h, new_w], InterpolationMode.BICUBIC, antialias=True)
    pad_h, pad_w = size - new_h, size - new_w
    if pad_h or pad_w:
        pixels = TF.pad(pixels, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return TF.normalize(pixels, OPENAI_MEAN, OPENAI_STD)


def hps_transform(image: Image.Image, size: int = 224) -> torch.Tensor:
    """HPS's evaluation preprocessing of one PIL image (`hps_pixels` of its RGB pixels, on the CPU)."""
    return hps_pixels(TF.pil_to_tensor(image.convert("RGB")), size)


class HPSv2:
    """An HPS checkpoint on an open_clip model; `score(images, prompts)` in the chosen `scale`."""

    def __init__(
        self,
        version: str,
        checkpoint: str = "xswu/HPSv2",
        scale: str = "cos",
        architecture: str = "ViT-H-14",
        architecture_config: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = 16,
    ) -> None:
        import open_clip

        if version not in CHECKPOINTS:
            raise ValueError(f"HPS version must be one of {', '.join(CHECKPOINTS)}, got {version!r}")
        if scale not in SCALES:
            raise ValueError(f"HPS scale must be one of {', '.join(SCALES)}, got {scale!r}")
        self.name = "hpsv2" if version == "v2.0" else "hpsv2.1"
        self.version, self.scale, self.batch_size = version, scale, batch_size
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if architecture_config is not None:
            open_clip.add_model_config(architecture_config)
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)  # open_clip warns "initialized randomly": the checkpoint comes next
        try:
            self.model = open_clip.create_model(
                architecture, pretrained=None, precision=_OPEN_CLIP_PRECISION[self.dtype], device=self.device
            )
        finally:
            logging.disable(previous)
        path = hub_file(checkpoint, CHECKPOINTS[version], f"HPS {version} checkpoint")
        state = read_state_dict(path, key="state_dict")
        try:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
        except RuntimeError as error:  # shape mismatches
            raise ValueError(f"{path} does not fit open_clip {architecture}: {str(error)[:500]}") from error
        if missing or unexpected:
            raise ValueError(
                f"{path} does not fit open_clip {architecture}: missing keys {missing[:5]}, "
                f"unexpected keys {unexpected[:5]} ({len(missing)} / {len(unexpected)} in all)"
            )
        self.model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(architecture)
        self.image_size = self.model.visual.image_size[0]
        self.temperature = float(self.model.logit_scale.detach().float().exp())
        self.logit_scale = self.temperature if scale == "cos" else self.temperature / 100

    @torch.no_grad()
    def score(self, images: ImageBatch, prompts: Sequence[str]) -> torch.Tensor:
        """HPS of each image for its prompt, shape (N,), float32 on the CPU."""
        tensors = to_uint8_tensors(images)  # preprocessed on the model's device
        check_batch(tensors, prompts)
        input_dtype = self.model.visual.conv1.weight.dtype
        out = []
        for part in batches(len(tensors), self.batch_size):
            pixels = torch.stack([hps_pixels(t.to(self.device, non_blocking=True), self.image_size)
                                  for t in tensors[part]])
            image = self.model.encode_image(pixels.to(input_dtype)).float()
            text = self.model.encode_text(self.tokenizer(list(prompts[part])).to(self.device)).float()
            cos = (image / image.norm(dim=-1, keepdim=True) * (text / text.norm(dim=-1, keepdim=True))).sum(-1)
            out.append(cos.cpu())
        cos = torch.cat(out) if out else torch.zeros(0)
        return cos * 100 if self.scale == "100*cos" else cos


@register_scorer("hpsv2")
def hpsv2(**options: object) -> HPSv2:
    """HPS v2.0 (`HPS_v2_compressed.pt`)."""
    return HPSv2(version="v2.0", **options)  # type: ignore[arg-type]


@register_scorer("hpsv2.1")
def hpsv2_1(**options: object) -> HPSv2:
    """HPS v2.1 (`HPS_v2.1_compressed.pt`)."""
    return HPSv2(version="v2.1", **options)  # type: ignore[arg-type]

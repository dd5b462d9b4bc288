"""CLIP score as torchmetrics computes it: 100 * cos(E_image(image), E_text(prompt)) per image.

Default backbone `openai/clip-vit-large-patch14` (torchmetrics' default), its own processor
(`CLIPProcessor.from_pretrained`, transformers' default image-processor backend, as torchmetrics
loads it). Scores are per image and not clamped: torchmetrics' `CLIPScore.compute()` returns
max(mean of these, 0), so the mean of our scores equals torchmetrics' value whenever it is positive.
This is not Hessel et al.'s CLIPScore (2.5 * max(cos, 0)), and not the open_clip ViT-H/14 raw cosine
that the Diffusion-DPO code calls "CLIP"; `scale="cos"` gives the raw cosine of the chosen backbone.
Images are taken as 8-bit RGB (PIL, uint8, or floats in [0, 1] converted to uint8), which avoids
torchmetrics' trap of rescaling float images a second time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import (
    ImageBatch,
    check_batch,
    register_scorer,
    resolve_device,
    resolve_dtype,
)
from .hf_clip import clip_cosines, load_clip_model, load_clip_processor, processor_images

SCALES = ("100*cos", "cos")


@register_scorer("clip")
class ClipScore:
    """CLIP score of a transformers `CLIPModel`; `score(images, prompts)` in the chosen `scale`."""

    name = "clip"

    def __init__(
        self,
        model: str = "openai/clip-vit-large-patch14",
        scale: str = "100*cos",
        image_processor_backend: str = "torchvision",
        attention: str = "sdpa",
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = 32,
    ) -> None:
        if scale not in SCALES:
            raise ValueError(f"clip scale must be one of {', '.join(SCALES)}, got {scale!r}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.scale, self.batch_size = scale, batch_size
        self.model = load_clip_model(model, self.dtype, self.device, attention, "clip model")
        self.image_processor, self.tokenizer = load_clip_processor(
            model, image_processor_backend, "clip processor", self.device
        )
        temperature = float(self.model.logit_scale.detach().float().exp())
        self.logit_scale = temperature / 100 if scale == "100*cos" else temperature

    @torch.no_grad()
    def score(self, images: ImageBatch, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP score of each image for its prompt, shape (N,), float32 on the CPU."""
        inputs = processor_images(self.image_processor, images)
        check_batch(inputs, prompts)
        cos = clip_cosines(self.model, self.image_processor, self.tokenizer, inputs, prompts, self.batch_size)
        return cos * 100 if self.scale == "100*cos" else cos

"""PickScore (Kirstain et al. 2023): a CLIP-H/14 fine-tuned on Pick-a-Pic preferences.

score_i = s * cos(E_text(prompt_i), E_image(image_i)), s = exp(logit_scale) of the model (about 100).
That is the model card's score ("logit_scale*cos", the default). The Diffusion-DPO, SePPO and SmPO
codebases report the raw cosine instead ("cos", 100 times smaller); choose with `scale`. Either way
the preference probability among the candidates of one prompt is softmax_i(s * cos_i) (`preference`).

Preprocessing is that of the processor of `laion/CLIP-ViT-H-14-laion2B-s32B-b79K` (shortest side to
224, bicubic, centre crop 224, OpenAI mean/std), run by transformers' PIL backend on the CPU, which
reproduces the transformers 4.x processor the model was trained and published with; on CUDA
(`image_processor_backend="auto"`) by its torchvision backend on the GPU from uint8 tensors, so that
preprocessing keeps up with the fp16 model (its pixels differ from the PIL ones by the bicubic
kernels' rounding: see `hf_clip.load_clip_processor`). The tokenizer is its fast CLIP tokenizer (no
ftfy clean-up, as in the reference).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import (
    ImageBatch,
    check_batch,
    preference_probabilities,
    register_scorer,
    resolve_device,
    resolve_dtype,
)
from .hf_clip import clip_cosines, load_clip_model, load_clip_processor, processor_images

SCALES = ("logit_scale*cos", "cos")


@register_scorer("pickscore")
class PickScore:
    """PickScore_v1 on a transformers `CLIPModel`; `score(images, prompts)` in the chosen `scale`."""

    name = "pickscore"

    def __init__(
        self,
        model: str = "yuvalkirstain/PickScore_v1",
        processor: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        scale: str = "logit_scale*cos",
        image_processor_backend: str = "auto",
        attention: str = "sdpa",
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = 16,
    ) -> None:
        if scale not in SCALES:
            raise ValueError(f"pickscore scale must be one of {', '.join(SCALES)}, got {scale!r}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.scale = scale
        self.model = load_clip_model(model, self.dtype, self.device, attention, "pickscore model")
        self.image_processor, self.tokenizer = load_clip_processor(
            processor, image_processor_backend, "pickscore processor", self.device
        )
        self.temperature = float(self.model.logit_scale.detach().float().exp())
        self.logit_scale = 1.0 if scale == "logit_scale*cos" else self.temperature

    @torch.no_grad()
    def score(self, images: ImageBatch, prompts: Sequence[str]) -> torch.Tensor:
        """PickScore of each image for its prompt, shape (N,), float32 on the CPU."""
        inputs = processor_images(self.image_processor, images)
        check_batch(inputs, prompts)
        cos = clip_cosines(self.model, self.image_processor, self.tokenizer, inputs, prompts, self.batch_size)
        return cos * self.temperature if self.scale == "logit_scale*cos" else cos

    def preference(self, images: ImageBatch, prompt: str) -> torch.Tensor:
        """P(each candidate is preferred) among `images` of one prompt: softmax(exp(logit_scale) * cos)."""
        inputs = processor_images(self.image_processor, images)
        return preference_probabilities(self.score(inputs, [prompt] * len(inputs)), self.logit_scale).float()

"""The LAION aesthetic predictor v2 ("improved aesthetic predictor", Schuhmann 2022).

score = MLP(e / |e|), e the projected CLIP ViT-L/14 image embedding (768-d); the MLP is five linear
layers 768-1024-128-64-16-1 with dropout between them and no activations, trained with MSE on AVA-
style ratings, so scores read on a 1-10 scale (about 5-6.5 for Stable Diffusion images). Forgetting
the normalisation gives the scores of 20+ users report. The prompt is ignored.

Weights: the head `sac+logos+ava1-l14-linearMSE.pth` (a torch state dict, read tensors-only) from the
predictor's GitHub repository or a local file, on `openai/clip-vit-large-patch14` with its processor
run by the PIL backend (the same pixels as OpenAI CLIP's own preprocessing).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .base import (
    ImageBatch,
    check_batch,
    register_scorer,
    resolve_device,
    resolve_dtype,
)
from .heads import linear_head
from .hf_clip import batches, image_embeddings, load_clip_model, load_clip_processor, processor_images
from .weights import WeightsNotFound, read_state_dict, url_file

HEAD_URL = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac%2Blogos%2Bava1-l14-linearMSE.pth"
)


@register_scorer("aesthetic")
class AestheticScore:
    """LAION aesthetic predictor v2 on a transformers CLIP ViT-L/14; `score(images, prompts)` on its 1-10 scale."""

    name = "aesthetic"
    scale = "aesthetic rating (1-10)"
    logit_scale = 1.0

    def __init__(
        self,
        head: str = HEAD_URL,
        clip_model: str = "openai/clip-vit-large-patch14",
        image_processor_backend: str = "auto",
        attention: str = "sdpa",
        cache_dir: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = 32,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.model = load_clip_model(clip_model, self.dtype, self.device, attention, "aesthetic CLIP model")
        self.image_processor, _ = load_clip_processor(
            clip_model, image_processor_backend, "aesthetic CLIP processor", self.device
        )
        path = url_file(head, cache_dir, "aesthetic head") if head.startswith(("https://", "http://")) else Path(head)
        if not path.is_file():
            raise WeightsNotFound(f"aesthetic head: {head} does not exist; give the .pth/.safetensors file or a URL")
        state = read_state_dict(path)
        width = self.model.config.projection_dim
        self.head = linear_head((width, 1024, 128, 64, 16, 1), (0.2, 0.2, 0.1))
        try:
            self.head.load_state_dict({k.removeprefix("layers."): v for k, v in state.items()})
        except RuntimeError as error:
            raise ValueError(f"{path} is not an aesthetic head for {width}-d CLIP embeddings: {error}") from error
        self.head.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def score(self, images: ImageBatch, prompts: Sequence[str]) -> torch.Tensor:
        """Aesthetic rating of each image, shape (N,), float32 on the CPU; `prompts` only fix the count."""
        inputs = processor_images(self.image_processor, images)
        check_batch(inputs, prompts)
        out = [self.head(image_embeddings(self.model, self.image_processor, inputs[part])).squeeze(-1).cpu()
               for part in batches(len(inputs), self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0)

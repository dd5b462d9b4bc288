"""Loading a transformers CLIP model with its processor, and its L2-normalised embeddings.

Shared by the scorers built on transformers' `CLIPModel`: PickScore, CLIP score and the LAION
aesthetic predictor. Embeddings are returned in float32 whatever the model's dtype, so that cosines
of fp16 models are accumulated in fp32 (fp16 reductions are what make scores tie, HPSv2#26).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from transformers import (
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPImageProcessorPil,
    CLIPModel,
)

from .attention import attention_implementation
from .base import ImageBatch, to_pil_images, to_uint8_tensors

IMAGE_PROCESSORS = {"pil": CLIPImageProcessorPil, "torchvision": CLIPImageProcessor}


def processor_backend(backend: str, device: torch.device) -> str:
    """The image-processor backend to load: `backend`, or for "auto" the torchvision one (preprocessing on the
    model's device) on CUDA and the PIL one (the published pixels) elsewhere."""
    if backend == "auto":
        return "torchvision" if device.type == "cuda" else "pil"
    return backend


def _unreachable(what: str, source: str, error: Exception) -> OSError:
    return OSError(
        f"{what}: cannot load {source!r} ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
        f"Offline, download the hub repo elsewhere (hf download {source}) and pass its local folder"
    )


def load_clip_model(source: str, dtype: torch.dtype, device: torch.device, attention: str, what: str) -> CLIPModel:
    """`CLIPModel.from_pretrained(source)` in `dtype` on `device`, in eval mode, with the chosen attention backend."""
    try:
        model = CLIPModel.from_pretrained(
            source, dtype=dtype, attn_implementation=attention_implementation(attention)
        )
    except OSError as error:
        raise _unreachable(what, source, error) from error
    return model.to(device).eval().requires_grad_(False)


def load_clip_processor(
    source: str, backend: str, what: str, device: torch.device = torch.device("cpu")
) -> tuple[object, object]:
    """(image processor, tokenizer) of a CLIP hub repo or folder; `backend` "pil", "torchvision" or "auto"
    (`processor_backend` for a model on `device`).

    The PIL backend reproduces transformers 4.x and open_clip's preprocessing bit for bit; the
    torchvision backend is transformers 5's default `CLIPImageProcessor`, run on the model's device from
    uint8 tensors (`image_embeddings`), whose pixels differ from the PIL ones by the bicubic kernels'
    rounding (bounded in tests/rewards/test_device_preprocessing.py).
    """
    backend = processor_backend(backend, device)
    if backend not in IMAGE_PROCESSORS:
        raise ValueError(f"unknown image processor backend {backend!r}; use auto, {', '.join(IMAGE_PROCESSORS)}")
    try:
        return IMAGE_PROCESSORS[backend].from_pretrained(source), AutoTokenizer.from_pretrained(source)
    except OSError as error:
        raise _unreachable(what, source, error) from error


def _pooled(output: object) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output holds the projected features; 4.x a tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output  # type: ignore[attr-defined]


def processor_images(processor: object, images: ImageBatch) -> list:
    """The images as `processor` takes them: PIL images for the PIL backend, uint8 (3, H, W) tensors for the
    torchvision one (which then resizes, crops and normalises them on the model's device)."""
    return to_uint8_tensors(images) if isinstance(processor, CLIPImageProcessor) else to_pil_images(images)


def image_embeddings(model: CLIPModel, processor: object, images: Sequence) -> torch.Tensor:
    """Unit-norm projected image embeddings (N, D), float32; `images` as `processor_images` gives them."""
    if isinstance(processor, CLIPImageProcessor):  # uint8 tensors: preprocessed where the model runs
        tensors = [image.to(model.device, non_blocking=True) for image in images]
        pixels = processor(images=tensors, return_tensors="pt", device=model.device)["pixel_values"]
    else:
        pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]  # type: ignore[operator]
    features = _pooled(model.get_image_features(pixel_values=pixels.to(model.device, model.dtype)))
    features = features.float()
    return features / features.norm(dim=-1, keepdim=True)


def text_embeddings(model: CLIPModel, tokenizer: object, prompts: Sequence[str]) -> torch.Tensor:
    """Unit-norm projected text embeddings (N, D), float32; prompts padded to the longest, truncated at 77 tokens.

    Each distinct prompt is encoded once (a prompt's K candidates share one text embedding).
    """
    unique = list(dict.fromkeys(prompts))
    tokens = tokenizer(unique, padding=True, truncation=True, max_length=77, return_tensors="pt")  # type: ignore[operator]
    features = _pooled(
        model.get_text_features(
            input_ids=tokens["input_ids"].to(model.device), attention_mask=tokens["attention_mask"].to(model.device)
        )
    ).float()
    features = features / features.norm(dim=-1, keepdim=True)
    index = {prompt: i for i, prompt in enumerate(unique)}
    return features[torch.tensor([index[p] for p in prompts], device=features.device)]


def clip_cosines(
    model: CLIPModel, processor: object, tokenizer: object, images: Sequence, prompts: Sequence[str],
    batch_size: int,
) -> torch.Tensor:
    """cos(E_image(image_i), E_text(prompt_i)) for every pair, `batch_size` at a time (`images` as
    `processor_images` gives them); (N,) float32 on the CPU."""
    out = [
        (image_embeddings(model, processor, images[part]) * text_embeddings(model, tokenizer, prompts[part])).sum(-1).cpu()
        for part in batches(len(images), batch_size)
    ]
    return torch.cat(out) if out else torch.zeros(0)


def batches(count: int, batch_size: int) -> list[slice]:
    """Consecutive slices of at most `batch_size` covering range(count)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return [slice(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]

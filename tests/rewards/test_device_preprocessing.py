"""Preprocessing on the model's device from uint8 tensors: the same pixels as the published transforms,
within the stated tolerance (CLIP's torchvision backend against the PIL one) or exactly (HPS)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffalign.rewards import build_scorer
from diffalign.rewards.base import to_uint8_tensors
from diffalign.rewards.hf_clip import load_clip_processor, processor_backend, processor_images
from diffalign.rewards.hps import hps_pixels, hps_transform


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
             for w, h in [(512, 512), (300, 200), (640, 480), (224, 224), (100, 300)]]
    ys, xs = np.mgrid[0:512, 0:512]
    smooth = np.stack([(xs / 2) % 256, (ys / 2) % 256, ((xs + ys) / 4) % 256], -1).astype(np.uint8)
    return [*noise, Image.fromarray(smooth), Image.fromarray(smooth).convert("RGBA")]


def test_uint8_tensors_hold_the_pil_pixels():
    images = _images()
    expected = [torch.from_numpy(np.array(i.convert("RGB"))).permute(2, 0, 1) for i in images]
    assert all(torch.equal(a, b) for a, b in zip(to_uint8_tensors(images), expected))
    square = np.asarray(images[0])
    hwc, chw = to_uint8_tensors(square[None]), to_uint8_tensors(torch.from_numpy(square).permute(2, 0, 1))
    floats = to_uint8_tensors(torch.from_numpy(square).permute(2, 0, 1).float()[None] / 255)
    assert torch.equal(hwc[0], expected[0]) and torch.equal(chw[0], expected[0]) and torch.equal(floats[0], expected[0])


def test_hps_on_tensors_is_its_pil_transform_exactly():
    for image in _images():
        assert torch.equal(hps_pixels(to_uint8_tensors([image])[0]), hps_transform(image))


def test_clip_torchvision_backend_on_tensors_is_within_two_levels_of_the_pil_pixels(tiny_clip):
    images = _images()
    pil, _ = load_clip_processor(str(tiny_clip), "pil", "test")
    device, _ = load_clip_processor(str(tiny_clip), "torchvision", "test")
    assert isinstance(processor_images(pil, images)[0], Image.Image)
    tensors = processor_images(device, images)
    assert all(t.dtype == torch.uint8 for t in tensors)
    published = pil(images=images, return_tensors="pt")["pixel_values"]
    on_device = device(images=tensors, return_tensors="pt", device=torch.device("cpu"))["pixel_values"]
    from_pil = device(images=images, return_tensors="pt")["pixel_values"]
    assert torch.equal(on_device, from_pil)  # tensors in, same pixels as the same backend given PIL images
    levels = (on_device - published).abs() * torch.tensor(pil.image_std).view(1, 3, 1, 1) * 255
    assert levels.max() <= 2.01 and levels.mean() < 0.01  # bicubic kernels' rounding: at most 2/255, rarely


def test_scores_from_device_preprocessing_are_close_to_the_published_pixels(tiny_clip):
    images, prompts = _images(), ["a cat on a mat"] * 7
    published = build_scorer("pickscore", model=str(tiny_clip), processor=str(tiny_clip), image_processor_backend="pil")
    device = build_scorer("pickscore", model=str(tiny_clip), processor=str(tiny_clip),
                          image_processor_backend="torchvision")
    assert torch.allclose(device.score(images, prompts), published.score(images, prompts), atol=2e-3)
    assert processor_backend("auto", torch.device("cpu")) == "pil"
    assert processor_backend("auto", torch.device("cuda")) == "torchvision"
    assert processor_backend("pil", torch.device("cuda")) == "pil"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_a_gpu_the_pixels_are_made_there(tiny_clip):
    scorer = build_scorer("pickscore", model=str(tiny_clip), processor=str(tiny_clip), device="cuda", dtype="float32")
    published = build_scorer("pickscore", model=str(tiny_clip), processor=str(tiny_clip), device="cpu",
                             image_processor_backend="pil")
    images, prompts = _images(), ["a cat"] * 7
    assert torch.allclose(scorer.score(images, prompts), published.score(images, prompts), atol=2e-3)

"""CLIP score against torchmetrics' CLIPScore on the same tiny CLIP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.multimodal.clip_score import CLIPScore
from transformers import CLIPModel, CLIPProcessor

from diffalign.rewards import build_scorer


def test_matches_torchmetrics_per_image(tiny_clip, photos):
    images, prompts = photos
    model, processor = CLIPModel.from_pretrained(tiny_clip), CLIPProcessor.from_pretrained(tiny_clip)
    # torchmetrics 1.9 expects the transformers 4 return type (a tensor) from get_*_features.
    for name in ("get_image_features", "get_text_features"):
        method = getattr(model, name)
        setattr(model, name, lambda *a, _m=method, **k: _m(*a, **k).pooler_output)
    metric = CLIPScore(model_name_or_path=lambda: (model, processor))
    expected = []
    for image, prompt in zip(images, prompts):
        metric.reset()
        metric.update(torch.from_numpy(np.array(image)).permute(2, 0, 1), prompt)  # uint8 CHW, as documented
        expected.append(metric.score.item())  # the accumulated sum of one sample: its 100 * cos
    scorer = build_scorer("clip", model=str(tiny_clip), batch_size=4)
    got = scorer.score(images, prompts)
    assert torch.allclose(got, torch.tensor(expected), atol=1e-3)
    assert scorer.scale == "100*cos"

    metric.reset()
    for image, prompt in zip(images, prompts):
        metric.update(torch.from_numpy(np.array(image)).permute(2, 0, 1), prompt)
    assert metric.compute().item() == pytest.approx(max(got.mean().item(), 0.0), abs=1e-3)


def test_float_images_are_not_rescaled_twice(tiny_clip, photos):
    images, prompts = photos
    same_size = [image.resize((64, 64)) for image in images]
    uint8 = torch.from_numpy(np.stack([np.asarray(i) for i in same_size])).permute(0, 3, 1, 2)
    scorer = build_scorer("clip", model=str(tiny_clip))
    assert torch.allclose(scorer.score(uint8, prompts), scorer.score(uint8.float() / 255, prompts), atol=1e-4)
    assert torch.allclose(scorer.score(uint8, prompts), scorer.score(same_size, prompts), atol=1e-4)


def test_cos_scale(tiny_clip, photos):
    images, prompts = photos
    hundred = build_scorer("clip", model=str(tiny_clip))
    cos = build_scorer("clip", model=str(tiny_clip), scale="cos")
    assert torch.allclose(hundred.score(images, prompts), 100 * cos.score(images, prompts), atol=1e-3)

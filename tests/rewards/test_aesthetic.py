"""The LAION aesthetic predictor: normalised CLIP ViT-L/14 embedding through the published linear head."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import CLIPImageProcessorPil, CLIPModel

from diffalign.rewards import build_scorer
from diffalign.rewards.weights import WeightsNotFound


def reference_aesthetic(clip_folder, head_path, images):
    """simple_inference.py: embed, L2-normalise, then the five linear layers (no activations)."""
    model = CLIPModel.from_pretrained(clip_folder).eval()
    pixels = CLIPImageProcessorPil.from_pretrained(clip_folder)(images=images, return_tensors="pt")["pixel_values"]
    weights = torch.load(head_path, weights_only=True)
    with torch.no_grad():
        x = model.get_image_features(pixel_values=pixels).pooler_output
        x = x / x.norm(dim=-1, keepdim=True)
        for i in (0, 2, 4, 6, 7):
            x = x @ weights[f"layers.{i}.weight"].T + weights[f"layers.{i}.bias"]
    return x.squeeze(-1)


def test_matches_reference(tiny_clip, tiny_aesthetic_head, photos):
    images, prompts = photos
    scorer = build_scorer("aesthetic", head=str(tiny_aesthetic_head), clip_model=str(tiny_clip), batch_size=4)
    expected = reference_aesthetic(tiny_clip, tiny_aesthetic_head, images)
    assert torch.allclose(scorer.score(images, prompts), expected, atol=1e-5)
    # the prompt is ignored
    assert torch.equal(scorer.score(images, [""] * len(images)), scorer.score(images, prompts))


def test_head_from_url_is_cached(tiny_clip, tiny_aesthetic_head, tmp_path, monkeypatch):
    calls = []

    def fake_download(url, dst, progress=True):
        calls.append(url)
        shutil.copy(tiny_aesthetic_head, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    for _ in range(2):
        scorer = build_scorer("aesthetic", clip_model=str(tiny_clip), cache_dir=str(tmp_path))
    assert len(calls) == 1 and (tmp_path / "sac+logos+ava1-l14-linearMSE.pth").is_file()
    assert scorer.score([torch.zeros(3, 32, 32)], [""]).shape == (1,)


def test_clear_errors(tiny_clip, tiny_aesthetic_head, tmp_path, monkeypatch):
    with pytest.raises(WeightsNotFound, match="does not exist"):
        build_scorer("aesthetic", head=str(tmp_path / "missing.pth"), clip_model=str(tiny_clip))

    def offline(url, dst, progress=True):
        raise ConnectionError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsNotFound, match="Offline, fetch it elsewhere"):
        build_scorer("aesthetic", clip_model=str(tiny_clip), cache_dir=str(tmp_path))
    wrong = tmp_path / "wrong.pth"
    torch.save({"layers.0.weight": torch.zeros(1024, 768)}, wrong)
    with pytest.raises(ValueError, match="not an aesthetic head for 32-d"):
        build_scorer("aesthetic", head=str(wrong), clip_model=str(tiny_clip))

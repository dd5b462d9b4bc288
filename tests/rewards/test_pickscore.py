"""PickScore against its model card's computation, on a tiny CLIP saved like PickScore_v1."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from transformers import AutoProcessor, CLIPImageProcessorPil, CLIPModel

from diffalign.rewards import build_scorer, preference_probabilities


def model_card_scores(folder, images, prompt):
    """The README of yuvalkirstain/PickScore, with transformers 5's `.pooler_output`."""
    processor = AutoProcessor.from_pretrained(folder)
    model = CLIPModel.from_pretrained(folder).eval()
    image_inputs = processor(images=images, padding=True, truncation=True, max_length=77, return_tensors="pt")
    text_inputs = processor(text=prompt, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        image_embs = model.get_image_features(**image_inputs).pooler_output
        image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
        text_embs = model.get_text_features(**text_inputs).pooler_output
        text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
        scores = model.logit_scale.exp() * (text_embs @ image_embs.T)[0]
        probs = torch.softmax(scores, dim=-1)
    return scores, probs


def test_matches_model_card(tiny_clip, photos):
    images, _ = photos
    prompt = "a red cat sitting on a mat"
    scorer = build_scorer("pickscore", model=str(tiny_clip), processor=str(tiny_clip), image_processor_backend="torchvision")
    expected, expected_probs = model_card_scores(tiny_clip, images, prompt)
    got = scorer.score(images, [prompt] * len(images))
    assert torch.allclose(got, expected, atol=1e-4)
    assert torch.allclose(scorer.preference(images, prompt), expected_probs, atol=1e-5)
    assert scorer.scale == "logit_scale*cos" and scorer.logit_scale == 1.0


def test_cos_scale_is_the_dpo_codebases_value(tiny_clip, photos):
    images, prompts = photos
    card = build_scorer("pickscore", model=str(tiny_clip), processor=str(tiny_clip))
    dpo = build_scorer("pickscore", model=str(tiny_clip), processor=str(tiny_clip), scale="cos")
    temperature = float(CLIPModel.from_pretrained(tiny_clip).logit_scale.detach().exp())
    assert torch.allclose(card.score(images, prompts), dpo.score(images, prompts) * temperature, atol=1e-4)
    assert dpo.logit_scale == pytest.approx(temperature)
    # Same preference probabilities whichever scale the scores are in.
    assert torch.allclose(card.preference(images, "a red cat"), dpo.preference(images, "a red cat"), atol=1e-6)


def test_pil_backend_reproduces_open_clip_preprocessing(tiny_clip, photos):
    """The default image processor (PIL backend) gives the pixels of open_clip's / transformers 4.x preprocessing."""
    images, _ = photos
    ours = CLIPImageProcessorPil.from_pretrained(tiny_clip)(images=images, return_tensors="pt")["pixel_values"]
    reference = open_clip.image_transform(224, is_train=False)
    expected = torch.stack([reference(image) for image in images])
    assert torch.allclose(ours, expected, atol=1e-6)


def test_batched_equals_one_at_a_time_with_mixed_sizes(tiny_clip, photos):
    images, prompts = photos
    scorer = build_scorer("pickscore", model=str(tiny_clip), processor=str(tiny_clip), batch_size=4)
    batched = scorer.score(images, prompts)
    single = torch.cat([scorer.score([image], [prompt]) for image, prompt in zip(images, prompts)])
    assert torch.allclose(batched, single, atol=1e-4)
    assert batched.dtype == torch.float32 and batched.shape == (len(images),)
    # different prompts give different scores for the same image
    assert scorer.score([images[0]] * 2, ["a red cat", "an astronaut"]).unique().numel() == 2


def test_preference_probabilities_is_bradley_terry():
    scores = torch.tensor([[0.30, 0.25], [0.1, 0.1]])
    probs = preference_probabilities(scores, logit_scale=100.0)
    assert probs[0, 0].item() == pytest.approx(1 / (1 + np.exp(-100 * 0.05)))
    assert probs[1].tolist() == [0.5, 0.5]
    assert torch.allclose(probs.sum(-1), torch.ones(2, dtype=torch.float64))


def test_eager_and_sdpa_attention_agree(tiny_clip, photos):
    images, prompts = photos
    sdpa = build_scorer("pickscore", model=str(tiny_clip), processor=str(tiny_clip), attention="sdpa")
    eager = build_scorer("pickscore", model=str(tiny_clip), processor=str(tiny_clip), attention="eager")
    assert torch.allclose(sdpa.score(images, prompts), eager.score(images, prompts), atol=1e-4)


def test_clear_errors(tiny_clip, tmp_path):
    with pytest.raises(ValueError, match="scale must be one of"):
        build_scorer("pickscore", model=str(tiny_clip), processor=str(tiny_clip), scale="100*cos")
    with pytest.raises(OSError, match="pass its local folder"):
        build_scorer("pickscore", model=str(tmp_path / "nowhere"), processor=str(tiny_clip))
    scorer = build_scorer("pickscore", model=str(tiny_clip), processor=str(tiny_clip))
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        scorer.score([np.zeros((8, 8, 3), np.uint8)] * 2, ["one"])
    with pytest.raises(TypeError, match="not a single string"):
        scorer.score([np.zeros((8, 8, 3), np.uint8)], "one")

"""Encoding a batch: the method, not the table, decides whether each image is conditioned on its own caption."""

from __future__ import annotations

import torch

from diffalign.config.schema import ModelConfig
from diffalign.data.record import PairBatch, Side
from diffalign.models.conditioning import encode_prompts
from diffalign.models.loading import load_parts
from diffalign.training.encode import encode_batch
from diffalign.training.randomness import BatchRandom


def _dual_caption_batch() -> PairBatch:
    pixels = torch.zeros(2, 3, 32, 32)
    sizes, crops = torch.tensor([[32, 32]] * 2), torch.zeros(2, 2, dtype=torch.long)
    return PairBatch(
        ["a red circle", "a blue square"],
        Side(["a red circle on black", "a blue square, small"], pixels=pixels, original_sizes=sizes, crops=crops),
        Side(["a pink circle", "a green square"], pixels=pixels + 0.5, original_sizes=sizes, crops=crops),
    )


def test_dual_captions_reach_the_unet_only_when_the_method_asks(tiny_models):
    parts = load_parts(ModelConfig(pretrained=str(tiny_models["sd15"])))
    batch = _dual_caption_batch()
    cpu = torch.device("cpu")
    plain = encode_batch(parts, batch, 0.0, BatchRandom(0, 0, 2), 32, cpu)
    prompt = encode_prompts(parts, batch.captions).hidden_states
    assert torch.equal(plain.w.cond.hidden_states, prompt) and torch.equal(plain.l.cond.hidden_states, prompt)

    own = encode_batch(parts, batch, 0.0, BatchRandom(0, 0, 2), 32, cpu, per_image_captions=True)
    torch.testing.assert_close(own.w.cond.hidden_states, encode_prompts(parts, batch.w.own_captions).hidden_states)
    torch.testing.assert_close(own.l.cond.hidden_states, encode_prompts(parts, batch.l.own_captions).hidden_states)
    assert torch.equal(own.w.latents, plain.w.latents)  # the same draws either way


def test_winners_only_batches_encode_one_side(tiny_models):
    parts = load_parts(ModelConfig(pretrained=str(tiny_models["sd15"])))
    batch = _dual_caption_batch()
    batch.l = None
    encoded = encode_batch(parts, batch, 0.5, BatchRandom(0, 0, 2), 32, torch.device("cpu"))
    assert encoded.l is None and encoded.w.latents.shape == (2, 4, 8, 8)

"""`score_in_batches`: every input form, bad images isolated and returned, first-batch and interrupt rules."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from diffalign.rewards import ScorerFailure, build_scorer, score_in_batches, to_float_images
from diffalign.synthetic.domain import random_spec
from diffalign.synthetic.render import render


class RedScorer:
    """Mean red channel in [0, 1] (NaN for a fully black image), under any name; `calls` counts its images per call."""

    scale, logit_scale = "mean red in [0, 1]", 1.0

    def __init__(self, name: str = "red") -> None:
        self.name, self.calls = name, []

    def score(self, images, prompts):
        self.calls.append(len(prompts))
        floats = to_float_images(images)
        red = floats[:, 0].mean(dim=(1, 2)).double()
        return torch.where(floats.amax(dim=(1, 2, 3)) > 0, red, torch.tensor(float("nan"), dtype=torch.float64))


def _renders(count: int) -> tuple[np.ndarray, list[str]]:
    rng = random.Random(0)
    specs = [random_spec(rng) for _ in range(count)]
    return np.stack([render(spec, rng)[0] for spec in specs]), [spec.caption for spec in specs]


def test_a_round_of_uint8_images_gives_a_tensor_of_scores_like_one_call():
    images, prompts = _renders(7)  # (N, H, W, 3) uint8, as an online round generates them
    shapes = build_scorer("shapes")
    result = score_in_batches(shapes, images, prompts, batch_size=3)
    scores = result.values()
    assert isinstance(scores, torch.Tensor) and scores.shape == (7,) and scores.dtype == torch.float64
    assert result.failures == [] and not result.interrupted
    torch.testing.assert_close(scores, shapes.score(images, prompts).double())


def test_float_tensors_pil_images_and_loaders_score_alike():
    pixels = torch.rand(4, 3, 8, 8)
    scorer = RedScorer()
    from_tensor = score_in_batches(scorer, pixels, ["p"] * 4).values()
    as_pil = [Image.fromarray((p.permute(1, 2, 0) * 255).round().byte().numpy()) for p in pixels]
    from_pil = score_in_batches(scorer, as_pil, ["p"] * 4).values()
    from_loaders = score_in_batches(scorer, [lambda im=im: im for im in as_pil], ["p"] * 4).values()
    torch.testing.assert_close(from_tensor, pixels[:, 0].mean(dim=(1, 2)).double())  # no rounding through PIL
    torch.testing.assert_close(from_pil, from_loaders)
    assert torch.allclose(from_tensor, from_pil, atol=1 / 255)


def test_bad_images_are_returned_with_their_reason_and_the_rest_scored():
    good = Image.new("RGB", (8, 8), (255, 0, 0))

    def unreadable() -> Image.Image:
        raise ValueError("cannot read image (truncated)")

    images = [good, unreadable, Image.new("RGB", (8, 8)), good, "not an image"]
    result = score_in_batches(RedScorer(), images, ["p"] * 5, batch_size=2)
    assert result.failed == [1, 2, 4]
    reasons = {f.index: f for f in result.failures}
    assert reasons[1].reason == "cannot read image (truncated)" and reasons[1].scorer is None
    assert reasons[2].reason == "red: non-finite score (nan)" and reasons[2].scorer == "red"
    assert "expected a PIL image" in reasons[4].reason
    values = result.values()
    assert values[[0, 3]].tolist() == [1.0, 1.0] and values[[1, 2, 4]].isnan().all()


def test_several_scorers_share_each_loaded_batch():
    loads = []

    def loader(value: int):
        def load() -> Image.Image:
            loads.append(value)
            return Image.new("RGB", (4, 4), (value, 0, 0))
        return load

    red, other = RedScorer(), RedScorer("other")
    result = score_in_batches([red, other], [loader(v) for v in (51, 102, 204)], ["p"] * 3, batch_size=2)
    assert loads == [51, 102, 204]  # each image decoded once for both scorers
    assert red.calls == other.calls == [2, 1]
    torch.testing.assert_close(result.scores["red"], result.scores["other"])
    with pytest.raises(ValueError, match="2 scorers"):
        result.values()


def test_a_scorer_failing_on_the_whole_first_batch_stops_only_when_asked():
    black = np.zeros((4, 8, 8, 3), np.uint8)
    with pytest.raises(ScorerFailure, match=r"'red' failed on all 2 images of the first batch, e\.g\. image 0: red: non-finite"):
        score_in_batches(RedScorer(), black, ["p"] * 4, batch_size=2, stop_if_first_batch_fails=True)
    assert score_in_batches(RedScorer(), black, ["p"] * 4, batch_size=2).failed == [0, 1, 2, 3]


def test_stop_after_failure_and_stop_on_interrupt_return_what_was_scored():
    images = np.full((6, 4, 4, 3), 255, np.uint8)
    images[2] = 0
    scorer = RedScorer()
    result = score_in_batches(scorer, images, ["p"] * 6, batch_size=2, stop_after_failure=True)
    assert result.failed == [2] and scorer.calls == [2, 2] and result.values()[4:].isnan().all()

    class Interrupting(RedScorer):
        def score(self, images, prompts):
            if self.calls:
                raise KeyboardInterrupt
            return super().score(images, prompts)

    result = score_in_batches(Interrupting(), images, ["p"] * 6, batch_size=2, stop_on_interrupt=True)
    assert result.interrupted and result.failures == [] and result.values()[:2].tolist() == [1.0, 1.0]
    with pytest.raises(KeyboardInterrupt):
        score_in_batches(Interrupting(), images, ["p"] * 6, batch_size=2)


def test_input_errors_are_clear():
    with pytest.raises(ValueError, match="3 images but 2 prompts"):
        score_in_batches(RedScorer(), torch.rand(3, 3, 4, 4), ["a", "b"])
    with pytest.raises(ValueError, match=r"must be a batch .* got shape \(4, 4, 3\)"):
        score_in_batches(RedScorer(), np.zeros((4, 4, 3), np.uint8), ["a"])
    with pytest.raises(ValueError, match="batch size must be at least 1"):
        score_in_batches(RedScorer(), torch.rand(1, 3, 4, 4), ["a"], batch_size=0)

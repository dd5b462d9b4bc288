import random

import numpy as np
import pytest
import torch
from PIL import Image

from diffalign.rewards import available_scorers, build_scorer
from diffalign.rewards.shapes import attribute_scores, classify, measure
from diffalign.synthetic.domain import COLOURS, SHAPES, SIZES, SceneSpec, random_spec
from diffalign.synthetic.render import render


def renders(n, seed=0):
    rng = random.Random(seed)
    for _ in range(n):
        spec = random_spec(rng)
        image, layout = render(spec, rng)
        yield spec, image, layout


def test_registered_by_name():
    assert "shapes" in available_scorers()
    with pytest.raises(KeyError, match="did you mean 'shapes'"):
        build_scorer("shape")


def test_reward_agrees_with_ground_truth_on_renders():
    hits = {"background": [], "colour": [], "shape": [], "size": []}
    rewards = []
    for spec, image, _ in renders(400):
        m = measure(image / 255.0)
        found = classify(m)
        for key in ("background", "colour", "shape"):
            hits[key].append(found[key] == getattr(spec, key))
        if spec.size:
            hits["size"].append(found["size"] == spec.size)
        rewards.append(np.mean(list(attribute_scores(m, spec).values())))
    accuracy = {k: np.mean(v) for k, v in hits.items()}
    assert accuracy["background"] == 1.0 and accuracy["colour"] == 1.0 and accuracy["size"] == 1.0
    assert accuracy["shape"] >= 0.99
    assert np.median(rewards) > 0.95 and np.min(rewards) > 0.7


@pytest.mark.parametrize("attribute", ["colour", "background", "shape", "size"])
def test_each_wrong_attribute_lowers_the_reward(attribute):
    scorer = build_scorer("shapes")
    options = {"colour": COLOURS, "background": COLOURS, "shape": SHAPES, "size": SIZES}
    rng = random.Random(1)
    checked = 0
    for spec, image, _ in renders(60, seed=2):
        if getattr(spec, attribute) is None:
            continue
        wrong_value = rng.choice([o for o in options[attribute] if o != getattr(spec, attribute)])
        fields = spec.__dict__ | {attribute: wrong_value}
        if fields["colour"] == fields["background"]:
            continue
        wrong = SceneSpec(**fields)
        right_score, wrong_score = scorer.score([Image.fromarray(image)] * 2, [spec.caption, wrong.caption]).tolist()
        assert right_score > wrong_score + 0.05, (spec.caption, wrong.caption)
        checked += 1
    assert checked >= 10


def test_graded_scores_rarely_tie_and_accept_every_image_type():
    scorer = build_scorer("shapes")
    items = list(renders(50, seed=5))
    images = np.stack([im for _, im, _ in items])
    prompts = [s.caption for s, _, _ in items]
    from_array = scorer.score(images, prompts)
    from_pil = scorer.score([Image.fromarray(im) for im in images], prompts)
    from_float = scorer.score(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, prompts)
    assert torch.allclose(from_array, from_pil) and torch.allclose(from_array, from_float)
    assert len(set(from_array.tolist())) == len(items)
    # a blank image has no shape: low reward
    blank = np.full((1, 32, 32, 3), 128, np.uint8)
    assert scorer.score(blank, [prompts[0]]).item() < 0.5
    # larger images are judged at 32 px
    big = np.stack([np.asarray(Image.fromarray(im).resize((64, 64), Image.NEAREST)) for im in images[:4]])
    assert torch.allclose(scorer.score(big, prompts[:4]), from_array[:4], atol=0.1)


def test_count_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        build_scorer("shapes").score(np.zeros((2, 32, 32, 3), np.uint8), ["a red circle on a blue background"])

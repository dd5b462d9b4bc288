import random

import pytest

from diffalign.synthetic.domain import CaptionError, SceneSpec, all_specs, parse_caption, random_spec, split_specs


def test_caption_round_trip_for_every_spec():
    specs = all_specs()
    assert len(specs) == 8 * 7 * 3 * 3
    for spec in specs:
        assert parse_caption(spec.caption) == spec


def test_caption_examples():
    assert SceneSpec("red", "circle", "blue").caption == "a red circle on a blue background"
    spec = parse_caption("  A small Yellow triangle on a  black background ")
    assert spec == SceneSpec("yellow", "triangle", "black", "small")


@pytest.mark.parametrize(
    "bad",
    ["a red circle", "a red hexagon on a blue background", "a red circle on a red background",
     "a red circle on a blue background, on the left", "a huge red circle on a blue background"],
)
def test_bad_captions_are_clear_errors(bad):
    with pytest.raises(CaptionError, match="same colour|unknown|parse"):
        parse_caption(bad)


def test_held_out_split_is_disjoint_and_stable():
    train, held_out = split_specs()
    assert not {s.caption for s in train} & {s.caption for s in held_out}
    assert 0.15 < len(held_out) / (len(train) + len(held_out)) < 0.25
    assert split_specs()[1] == held_out


def test_random_spec_is_seeded():
    a = [random_spec(random.Random(3)) for _ in range(1)]
    b = [random_spec(random.Random(3)) for _ in range(1)]
    assert a == b

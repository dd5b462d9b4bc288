import random
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from diffalign.data.pairs import PreferencePairs, load_pair_table, write_pair_table
from diffalign.data.relabel import make_relabeller, relabel_cache_path, relabel_table, score_pairs
from diffalign.rewards import base, build_scorer
from diffalign.rewards.shapes import ShapesReward
from diffalign.synthetic.domain import SceneSpec
from diffalign.synthetic.render import render

SPEC = SceneSpec("red", "circle", "blue", "large")
WRONG = SceneSpec("green", "square", "blue", "large")


def shapes_table(tmp_path, rng_seed=0):
    """Rows: 0 wrong human label (good image lost), 1 right label, 2 near-identical images, 3 a source tie."""
    rng = random.Random(rng_seed)
    good, near, bad = render(SPEC, rng)[0], render(SPEC, rng)[0], render(WRONG, rng)[0]
    return write_pair_table(
        tmp_path / "pairs.parquet",
        {
            "caption": [SPEC.caption] * 4,
            "jpg_0": [good, bad, good, bad],
            "jpg_1": [bad, good, near, good],
            "label_0": [0.0, 0.0, 1.0, 0.5],
            "label_1": [1.0, 1.0, 0.0, 0.5],
        },
    )


@pytest.fixture
def counting_scorer(monkeypatch):
    """Register `counting-shapes`: the shapes scorer, counting the images it scores."""
    calls = {"images": 0, "built": 0}

    class Counting(ShapesReward):
        name = "counting-shapes"

        def score(self, images, prompts):
            calls["images"] += len(images)
            return super().score(images, prompts)

    def factory(**kwargs):
        calls["built"] += 1
        return Counting(**kwargs)

    monkeypatch.setitem(base._REGISTRY, "counting-shapes", factory)
    return calls


def test_scorer_flips_wrong_label_and_decides_source_tie(tmp_path):
    table = load_pair_table(str(shapes_table(tmp_path)))
    s0, s1 = score_pairs(table, build_scorer("shapes"), batch_size=3, progress=False)
    assert s0.shape == s1.shape == (4,)
    relabelled, stats = relabel_table(table, s0, s1, tie_tolerance=0.05)
    assert relabelled["label_0"] == [1.0, 0.0, 0.5, 0.0]
    assert relabelled["label_1"] == [0.0, 1.0, 0.5, 1.0]
    assert np.allclose(relabelled["score_0"], s0) and np.allclose(relabelled["score_1"], s1)
    assert stats == {"rows": 4, "decided": 3, "ties": 1, "flipped": 1, "ties_decided": 1, "agreement": 0.5}
    strict, strict_stats = relabel_table(table, s0, s1, tie_tolerance=0.0)
    assert strict["label_0"][2] == 1.0 and strict_stats["ties"] == 0


def test_preference_pairs_drop_scorer_ties_and_cache_is_reused(tmp_path, counting_scorer, capsys):
    path = shapes_table(tmp_path)
    cache = tmp_path / "cache"
    relabel = make_relabeller("counting-shapes", 0.05, cache, batch_size=2)
    pairs = PreferencePairs(str(path), resolution=32, relabel=relabel)
    assert counting_scorer == {"images": 8, "built": 1}
    assert len(pairs) == 3 and pairs.dropped == 1
    assert pairs.table["label_0"] == [1.0, 0.0, 0.0]
    assert relabel.last_stats["flipped"] == 1 and relabel.last_cache_hit is False
    assert "4 pairs, 3 decided, 1 ties, 1 flipped" in capsys.readouterr().out

    files = list((cache / "relabel").iterdir())
    assert [f.name for f in files] == [files[0].name] and files[0].name.startswith("counting-shapes-")
    assert files[0].suffix == ".safetensors"
    with safe_open(str(files[0]), "pt") as f:
        assert sorted(f.keys()) == ["score_0", "score_1"]
        assert f.get_tensor("score_0").dtype.is_floating_point and f.get_tensor("score_0").shape == (4,)

    again = make_relabeller("counting-shapes", 0.0, cache)
    strict = PreferencePairs(str(path), resolution=32, relabel=again)
    assert counting_scorer == {"images": 8, "built": 1}  # scores loaded, scorer never built
    assert again.last_cache_hit is True and len(strict) == 4 and strict.dropped == 0
    assert "scores cached" in capsys.readouterr().out


def test_cache_key_follows_data_and_max_pairs(tmp_path, counting_scorer):
    path = shapes_table(tmp_path)
    cache = tmp_path / "cache"
    relabel = make_relabeller("counting-shapes", 0.05, cache)
    pairs = PreferencePairs(str(path), resolution=32, max_pairs=2, relabel=relabel)
    assert len(pairs) == 2 and counting_scorer["images"] == 4  # only the first max_pairs rows are scored
    PreferencePairs(str(path), resolution=32, relabel=relabel)
    assert counting_scorer["images"] == 12 and len(list((cache / "relabel").iterdir())) == 2
    assert relabel_cache_path(cache, "a/b", "key", 4).name.startswith("a_b-")


def test_editing_a_scorer_file_changes_the_cache_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("mine.py").write_text("def score(images, prompts):\n    return [0.0] * len(images)\n")
    before = relabel_cache_path(tmp_path, "mine.py:score", "key", 4)
    assert before == relabel_cache_path(tmp_path, "mine.py:score", "key", 4)
    Path("mine.py").write_text("def score(images, prompts):\n    return [1.0] * len(images)\n")
    assert relabel_cache_path(tmp_path, "mine.py:score", "key", 4) != before


def test_corrupt_image_error_names_the_row(tmp_path, counting_scorer):
    rng = random.Random(0)
    good = render(SPEC, rng)[0]
    path = write_pair_table(
        tmp_path / "corrupt.parquet",
        {
            "caption": [SPEC.caption] * 3,
            "jpg_0": [good, good, good],
            "jpg_1": [good, good, b"not an image"],
            "label_0": [1.0, 0.0, 1.0],
            "label_1": [0.0, 1.0, 0.0],
        },
    )
    table = load_pair_table(str(path))
    with pytest.raises(ValueError, match=r"^row 2 jpg_1: cannot decode"):
        score_pairs(table, build_scorer("shapes"), batch_size=2, progress=False)
    with pytest.raises(ValueError, match=r"corrupt\.parquet.* row 2 jpg_1: cannot decode"):
        PreferencePairs(str(path), resolution=32, relabel=make_relabeller("counting-shapes", 0.0, tmp_path / "c"))
    assert not (tmp_path / "c" / "relabel").exists() or not any((tmp_path / "c" / "relabel").iterdir())

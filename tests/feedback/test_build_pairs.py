"""AI-feedback pairs: pair choice on hand-made scores, weights, and the resumable writer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffalign.data.resume import from_ranges, open_progress, save_progress, to_ranges
from diffalign.feedback.build_pairs import choose_pairs, demo_captions, group_rows, image_seed, winner_first
from diffalign.feedback.combine import combine_scores, resolve_weights
from diffalign.feedback.pending_parts import PENDING_DIR, flush_parts, write_part


def test_best_worst_picks_extremes_and_respects_the_margin():
    scores = np.array([0.4, 0.9, 0.1, 0.5])
    assert choose_pairs(scores, "best-worst") == [(1, 2)]
    assert choose_pairs(scores, "best-worst", min_margin=0.8) == [(1, 2)]
    assert choose_pairs(scores, "best-worst", min_margin=0.81) == []
    assert choose_pairs(np.array([0.3, 0.3]), "best-worst") == []  # equal scores: no winner
    assert choose_pairs(np.array([np.nan, 0.2, 0.7]), "best-worst") == [(2, 1)]  # unscored image left out
    assert choose_pairs(np.array([np.nan, 0.2]), "best-worst") == []


def test_margin_strategy_keeps_every_clear_pair():
    scores = np.array([0.5, 0.1, 0.45, 0.5])
    assert choose_pairs(scores, "margin") == [(0, 1), (0, 2), (2, 1), (3, 1), (3, 2)]  # 0 vs 3 tie dropped
    assert choose_pairs(scores, "margin", min_margin=0.1) == [(0, 1), (2, 1), (3, 1)]
    with pytest.raises(ValueError, match="unknown strategy 'best'"):
        choose_pairs(scores, "best")


def test_weights_default_to_one_or_logit_scales_and_combine_linearly():
    assert resolve_weights(["a"], [20.0]) == ([1.0], 20.0)
    assert resolve_weights(["a", "b"], [20.0, 100.0]) == ([20.0, 100.0], 1.0)
    assert resolve_weights(["a", "b"], [20.0, 100.0], [1, 2]) == ([1.0, 2.0], 1.0)
    with pytest.raises(ValueError, match="1 value"):
        resolve_weights(["a", "b"], [1.0, 1.0], [1.0])
    scores = {"a": np.array([1.0, 0.0, 2.0]), "b": np.array([0.0, 3.0, np.nan])}
    np.testing.assert_allclose(combine_scores(scores, {"a": 2.0, "b": 1.0}), [2.0, 3.0, np.nan])
    # the weights decide the winner: a alone prefers image 0, b outweighs it
    combined = combine_scores({"a": np.array([0.6, 0.5]), "b": np.array([0.1, 0.3])}, {"a": 1.0, "b": 1.0})
    assert choose_pairs(combined) == [(1, 0)]


def test_seeds_and_sides_depend_only_on_seed_prompt_and_image():
    assert image_seed(0, 3, 1) == image_seed(0, 3, 1)
    seeds = {image_seed(s, i, j) for s in (0, 1) for i in range(20) for j in range(4)}
    assert len(seeds) == 160
    sides = [winner_first(0, i, 0) for i in range(200)]
    assert 70 < sum(sides) < 130
    captions = demo_captions(30, seed=0)
    assert len(captions) == 30 and captions == demo_captions(30, seed=0) != demo_captions(30, seed=1)


def test_group_rows_put_the_winner_on_its_side_with_every_score():
    images = [np.full((4, 4, 3), v, np.uint8) for v in (0, 100, 200)]
    scores = {"x": np.array([0.2, 0.9, 0.5]), "y": np.array([1.0, 0.0, 0.0])}
    combined = np.array([0.2, 0.9, 0.5])
    rows = group_rows("cap", images, scores, combined, 20.0, [7, 8, 9], "m", [(1, 0), (2, 0)], [True, False])
    assert rows["label_0"] == [1.0, 0.0] and rows["label_1"] == [0.0, 1.0]
    assert rows["seed_0"] == [8, 7] and rows["seed_1"] == [7, 9]
    assert rows["score_x_0"] == [0.9, 0.2] and rows["score_y_1"] == [1.0, 0.0]
    assert rows["score_0"] == [0.9, 0.2]
    assert rows["pref_prob_0"][0] == pytest.approx(1 / (1 + np.exp(-20 * 0.7)))
    assert rows["pref_prob_0"][1] == pytest.approx(1 / (1 + np.exp(20 * 0.3)))


def _rows(caption: str, n: int) -> dict:
    image = np.zeros((2, 2, 3), np.uint8)
    return {"caption": [caption] * n, "jpg_0": [image] * n, "jpg_1": [image] * n, "label_0": [1.0] * n,
            "label_1": [0.0] * n}


def test_parts_become_shards_once_and_a_crash_between_steps_loses_or_duplicates_nothing(tmp_path):
    state = open_progress(tmp_path, {"k": 2})
    for i, n in enumerate([2, 0, 3, 1]):
        write_part(tmp_path, i, _rows(f"p{i}", n), {"prompts": 1, "pairs": n})
    flush_parts(tmp_path, state, shard_size=4, final=False)  # p0+p1+p2 = 5 rows >= 4: one shard; p3 waits
    assert [s["rows"] for s in state["shards"]] == [5] and from_ranges(state["done"]) == {0, 1, 2}
    assert [p.name for p in (tmp_path / PENDING_DIR).iterdir()] == ["prompt-00000003.part"]
    # a crash after a shard was written but before progress.json named it: the shard is a leftover
    saved = json.loads((tmp_path / "progress.json").read_text())
    flush_parts(tmp_path, state, shard_size=4, final=True)
    (tmp_path / "progress.json").write_text(json.dumps(saved))
    write_part(tmp_path, 3, _rows("p3", 1), {"prompts": 1, "pairs": 1})
    state = open_progress(tmp_path, {"k": 2})
    assert not (tmp_path / "data" / "train-00001.parquet").exists()
    flush_parts(tmp_path, state, shard_size=4, final=True)
    assert [s["rows"] for s in state["shards"]] == [5, 1] and state["totals"] == {"prompts": 4, "pairs": 6}
    # a crash after progress.json named the prompt but before its part was deleted: the part is dropped
    write_part(tmp_path, 2, _rows("p2", 3), {"prompts": 1, "pairs": 3})
    flush_parts(tmp_path, state, shard_size=4, final=True)
    assert len(state["shards"]) == 2 and not list((tmp_path / PENDING_DIR).iterdir())


def test_progress_refuses_other_settings_and_names_the_key(tmp_path):
    state = open_progress(tmp_path, {"k": 2, "seed": 0})
    save_progress(tmp_path, state)
    with pytest.raises(ValueError, match=r"k: 2 there, 3 now.*--overwrite"):
        open_progress(tmp_path, {"k": 3, "seed": 0})
    assert open_progress(tmp_path, {"k": 3, "seed": 0}, overwrite=True)["settings"] == {"k": 3, "seed": 0}
    assert to_ranges([5, 1, 2, 3, 7]) == [[1, 3], [5, 5], [7, 7]] and from_ranges([[1, 3]]) == {1, 2, 3}

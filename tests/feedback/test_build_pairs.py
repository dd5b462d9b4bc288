"""AI-feedback pairs: pair choice on hand-made scores, weights, the resumable writer, and the shares of\nseveral processes (simulated in this process)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from diffalign.data.resume import from_ranges, open_progress, save_progress, to_ranges
from diffalign.feedback.build_pairs import (
    PairsJob,
    build_pairs,
    choose_pairs,
    demo_captions,
    group_rows,
    image_seed,
    winner_first,
)
from diffalign.feedback.combine import combine_scores, resolve_weights
from diffalign.feedback.pending_parts import PENDING_DIR, flush_parts, pending_prompts, write_part
from diffalign.files import atomic_write_text
from diffalign.processes import STATUS_DIR, Processes


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


def test_parts_are_gathered_only_up_to_the_first_prompt_not_drawn_yet(tmp_path):
    state = open_progress(tmp_path, {"k": 2})
    for i in (0, 2, 3, 5):  # prompt 1 is another process's, still drawing; 5 is past --max-prompts 5
        write_part(tmp_path, i, _rows(f"p{i}", 1), {"prompts": 1, "pairs": 1})
    flush_parts(tmp_path, state, shard_size=1, final=True, limit=5)
    assert from_ranges(state["done"]) == {0} and len(state["shards"]) == 1
    write_part(tmp_path, 1, _rows("p1", 1), {"prompts": 1, "pairs": 1})
    write_part(tmp_path, 4, _rows("p4", 1), {"prompts": 1, "pairs": 1})
    flush_parts(tmp_path, state, shard_size=2, final=True, limit=5)
    assert from_ranges(state["done"]) == {0, 1, 2, 3, 4}
    shards = [pq.read_table(tmp_path / s["file"])["caption"].to_pylist() for s in state["shards"]]
    assert shards == [["p0"], ["p1", "p2"], ["p3", "p4"]]  # prompt order, as one process gathers them
    assert [p.name for p in (tmp_path / PENDING_DIR).glob("*.part")] == ["prompt-00000005.part"]


def test_a_part_drawn_with_other_settings_is_refused_naming_what_changed(tmp_path):
    state = open_progress(tmp_path, {"k": 2, "seed": 0})
    write_part(tmp_path, 0, _rows("p0", 1), {"prompts": 1, "pairs": 1}, {"k": 2, "seed": 0})
    write_part(tmp_path, 1, _rows("p1", 1), {"prompts": 1, "pairs": 1}, {"k": 3, "seed": 1})
    write_part(tmp_path, 2, _rows("p2", 1), {"prompts": 1, "pairs": 1})  # no settings recorded
    foreign = str(tmp_path / PENDING_DIR / "prompt-00000001.part")
    with pytest.raises(ValueError, match=re.escape(f"{foreign}: a pending part drawn with other settings (k: 3 there, "
                                                   "2 now; also seed): use the same settings to resume")):
        pending_prompts(tmp_path, {"k": 2, "seed": 0})
    with pytest.raises(ValueError, match=re.escape(foreign)):
        flush_parts(tmp_path, state, shard_size=1, final=True, settings={"k": 2, "seed": 0})
    assert state["shards"] == [] and not (tmp_path / "data").exists()  # refused before writing anything
    (tmp_path / PENDING_DIR / "prompt-00000001.part").unlink()
    with pytest.raises(ValueError, match=r"prompt-00000002.part: a pending part drawn with other settings \(no settings"):
        pending_prompts(tmp_path, {"k": 2, "seed": 0})
    assert pending_prompts(tmp_path) == {0, 2}


TINY = str(Path(__file__).resolve().parents[2] / "assets" / "tiny-sd")
PROMPTS = ["a red circle on a blue background", "a small green square on a white background",
           "a large yellow triangle on a black background", "a blue circle on a white background",
           "a small red square on a black background", "a green triangle on a blue background"]


def _job(out: Path, **changes) -> PairsJob:
    job = PairsJob(prompts=PROMPTS, out=out, model=TINY, scorers=["shapes"], k=2, steps=2, shard_size=2,
                   batch_size=4, device="cpu", progress=False)  # 2 prompts a call: chunks 0-1, 2-3, 4-5
    return replace(job, **changes)


def _others_finished(out: Path, count: int = 2):
    """A barrier for the main process of `count` run alone: the others report their (empty) shares done."""

    def barrier() -> None:
        for index in range(1, count):
            atomic_write_text(out / STATUS_DIR / f"pairs-{index:05d}.json",
                              json.dumps({"done": 0, "state": "finished", "error": None}))

    return barrier


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "data").iterdir())}


def test_the_shares_of_two_processes_merge_into_the_output_of_one(tmp_path):
    reference = build_pairs(_job(tmp_path / "one"))
    assert reference.prompts_done_now == 6 and reference.complete

    out = tmp_path / "two"
    with pytest.raises(ValueError, match=re.escape(
            f"{out / PENDING_DIR}: no part of prompt 2 (drawn with prompts 2-3, the share of process 1 of 2): it was "
            "not drawn (rerun the same command to draw it)")):
        build_pairs(_job(out), Processes(0, 2, barrier=_others_finished(out)))  # process 1 drew nothing
    drawn = {p.name for p in (out / PENDING_DIR / "chunks").iterdir()}
    assert drawn == {"chunk-000000.json", "chunk-000002.json"}
    with pytest.raises(ValueError, match=r"k: 2 there, 3 now.*--overwrite"):
        build_pairs(_job(out, k=3))
    atomic_write_text(out / STATUS_DIR / "pairs-00000.json", json.dumps({"done": 0, "state": "finished", "error": None}))
    assert build_pairs(_job(out), Processes(1, 2)) is None  # its share, chunk 1, once process 0 says it is done
    assert json.loads((out / PENDING_DIR / "chunks" / "chunk-000001.json").read_text())["prompts"] == [[2, 3]]
    merged = build_pairs(_job(out))  # one process gathers the rest, drawing nothing
    assert merged.prompts_done_now == 0 and merged.complete and not (out / PENDING_DIR).exists()
    assert _files(out) == _files(tmp_path / "one") and len(_files(out)) >= 2
    progress = [json.loads((folder / "progress.json").read_text()) for folder in (out, tmp_path / "one")]
    assert progress[0] == progress[1]


def test_a_failed_start_leaves_no_settings_to_refuse_and_max_prompts_says_what_is_left(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(Exception):
        build_pairs(_job(out, model=str(tmp_path / "no-such-model"), max_prompts=3))
    assert json.loads((out / "progress.json").read_text())["shards"] == []  # written before any model loads
    result = build_pairs(_job(out, max_prompts=3))  # another model: nothing was drawn, so nothing to refuse
    assert result.totals["prompts"] == 3 and not result.complete
    assert '"complete": false' in (out / "README.md").read_text()

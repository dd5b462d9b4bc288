"""Round folders for human labelling: writing and reading a round, the decisions log, the pairs it makes."""

import json

import numpy as np
import pytest

from diffalign.data.label_rounds import (
    LABELS_FILE,
    ROUND_FILE,
    is_complete,
    read_decisions,
    read_round,
    record_choice,
    record_undo,
    round_pairs,
    write_pairs,
    write_round,
)

PROMPTS = ["a red circle", "a green square", "a blue triangle"]


def solid_images(prompts: int, per_prompt: int, size: int = 64) -> np.ndarray:
    """(prompts * per_prompt, size, size, 3) uint8 images, each one solid colour of its own."""
    colours = np.random.default_rng(0).integers(0, 256, (prompts * per_prompt, 1, 1, 3), dtype=np.uint8)
    return np.broadcast_to(colours, (prompts * per_prompt, size, size, 3)).copy()


@pytest.fixture
def folder(tmp_path):
    return write_round(tmp_path / "round-000002", 2, PROMPTS, solid_images(3, 3))


def test_write_then_read_round(folder):
    round_ = read_round(folder)
    assert round_.index == 2 and [p.prompt for p in round_.prompts] == PROMPTS
    assert round_.prompts[1].images == ("p0001-i0.png", "p0001-i1.png", "p0001-i2.png")
    assert json.loads((folder / ROUND_FILE).read_text())["prompts"][0] == {
        "prompt": "a red circle", "images": ["p0000-i0.png", "p0000-i1.png", "p0000-i2.png"]}
    from PIL import Image

    with Image.open(folder / "p0001-i2.png") as image:  # prompt-major: image 5 of the array
        assert np.array_equal(np.asarray(image), solid_images(3, 3)[5])
    assert not list(folder.glob(".*"))  # no temporary files left


def test_rewriting_the_same_round_keeps_its_labels_and_another_round_is_refused(folder):
    record_choice(folder, 0, 1)
    write_round(folder, 2, PROMPTS, solid_images(3, 3))
    assert read_decisions(folder) == {0: 1}
    with pytest.raises(FileExistsError, match=r"round.json holds another round \(round 2, 3 prompts\) than round 3"):
        write_round(folder, 3, PROMPTS, solid_images(3, 3))
    with pytest.raises(FileExistsError, match="than round 2 with these 2 prompts"):
        write_round(folder, 2, PROMPTS[:2], solid_images(2, 3))

    (folder / ROUND_FILE).unlink()
    with pytest.raises(FileExistsError, match="labels.jsonl exists but .*round.json does not"):
        write_round(folder, 2, PROMPTS, solid_images(3, 3))


def test_write_round_checks_the_images(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_round(tmp_path, 0, PROMPTS, solid_images(3, 2).astype(np.float32))
    with pytest.raises(ValueError, match="I >= 2"):
        write_round(tmp_path, 0, PROMPTS, solid_images(3, 1))
    with pytest.raises(ValueError, match="I >= 2"):
        write_round(tmp_path, 0, PROMPTS, solid_images(2, 2)[:4])  # 4 images for 3 prompts


def test_read_round_errors_name_the_file(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match="round.json: not found"):
        read_round(tmp_path)
    (folder / "p0002-i1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"p0002-i1.png: missing \(listed in .*round.json prompt 2\)"):
        read_round(folder)
    (folder / ROUND_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="round.json: not valid JSON"):
        read_round(folder)
    bad = {"round": 0, "prompts": [{"prompt": "x", "images": ["../a.png", "b"]}]}
    (folder / ROUND_FILE).write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="not a plain file name"):
        read_round(folder)


def test_decisions_replay_with_undo(folder):
    assert read_decisions(folder) == {} and record_undo(folder) is None
    assert not (folder / LABELS_FILE).exists()  # nothing to undo writes nothing
    record_choice(folder, 0, 2)
    record_choice(folder, 1, "tie")
    record_choice(folder, 0, 1)  # a new choice for prompt 0 replaces the first
    assert read_decisions(folder) == {0: 1, 1: "tie"}
    assert record_undo(folder) == 0  # takes the replacement back: the first choice stands again
    assert read_decisions(folder) == {0: 2, 1: "tie"}
    assert record_undo(folder) == 1
    assert read_decisions(folder) == {0: 2}
    lines = (folder / LABELS_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"prompt": 0, "choice": 2}, {"prompt": 1, "choice": "tie"}, {"prompt": 0, "choice": 1},
        {"undo": True}, {"undo": True}]


def test_bad_choices_are_refused(folder):
    for prompt, choice in ((3, 0), (0, 3), (0, "maybe"), (True, 0), (0, None)):
        with pytest.raises(ValueError):
            record_choice(folder, prompt, choice)
    assert not (folder / LABELS_FILE).exists()


def test_a_torn_last_line_is_ignored_and_cut_off_by_the_next_action(folder):
    record_choice(folder, 0, 1)
    with open(folder / LABELS_FILE, "ab") as log:
        log.write(b'{"prompt": 1, "cho')  # a crash in the middle of a write
    assert read_decisions(folder) == {0: 1}
    record_choice(folder, 2, "skip")
    assert read_decisions(folder) == {0: 1, 2: "skip"}
    assert b"cho\n" not in (folder / LABELS_FILE).read_bytes()


def test_a_bad_line_in_the_middle_names_the_line(folder):
    (folder / LABELS_FILE).write_text('{"prompt": 0, "choice": 1}\n{"prompt": 0, "choice": 7}\n')
    with pytest.raises(ValueError, match=r"labels.jsonl line 2: choice 7 for prompt 0"):
        read_decisions(folder)


def test_pairs_rows_ties_and_skips(folder):
    record_choice(folder, 0, 1)
    record_choice(folder, 1, "tie")
    record_choice(folder, 2, "skip")
    rows = [json.loads(line) for line in write_pairs(folder).read_text().splitlines()]
    assert rows == [{"prompt": "a red circle", "chosen": "p0000-i1.png", "rejected": "p0000-i0.png"},
                    {"prompt": "a red circle", "chosen": "p0000-i1.png", "rejected": "p0000-i2.png"}]
    assert round_pairs(folder) == [(0, 1, 0), (0, 1, 2)]
    record_undo(folder)
    record_undo(folder)
    record_undo(folder)
    assert write_pairs(folder).read_text() == ""


def test_is_complete_counts_ties_and_skips(folder):
    record_choice(folder, 0, "skip")
    record_choice(folder, 1, "tie")
    assert not is_complete(folder)
    record_choice(folder, 2, 0)
    assert is_complete(folder)
    record_undo(folder)
    assert not is_complete(folder)


def test_a_training_run_reads_the_pairs(folder):
    from diffalign.data.pairs import PreferencePairs

    record_choice(folder, 0, 2)
    record_choice(folder, 2, 0)
    write_pairs(folder)
    pairs = PreferencePairs(str(folder / "pairs.jsonl"), resolution=8)
    assert len(pairs) == 4
    assert list(pairs.table["caption"]) == ["a red circle"] * 2 + ["a blue triangle"] * 2
    assert pairs.table["image_0_url"][0] == str(folder / "p0000-i2.png")
    assert pairs.table["image_1_url"][3] == str(folder / "p0002-i2.png")
    item = pairs[0]
    assert item["w"]["pixels"].shape == (3, 8, 8) and item["w"]["original_sizes"] == (64, 64)
    assert not pairs.skip_report.rows

"""`ScoreJob`: scoring in chunks of one batch, recorded beside the output; other processes simulated in this one
(their status file written as the launch would)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffalign.data.image_inputs import collect_items
from diffalign.evaluation.score_job import PHASE, ScoreJob, parts_folder, score_settings
from diffalign.evaluation.scoring import score_items
from diffalign.processes import STATUS_DIR, Processes
from diffalign.rewards.batch import ScorerFailure
from diffalign.synthetic.domain import random_spec
from diffalign.synthetic.render import render


class Brightness:
    """Mean brightness; refuses prompts containing 'bad'."""

    name = "brightness"
    scale = "mean pixel in [0, 1]"

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.calls = 0
        self.interrupt_at = interrupt_at

    def score(self, images, prompts):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        if any("bad" in p for p in prompts):
            raise ValueError("cannot parse a bad prompt")
        return torch.tensor([np.asarray(image, dtype=np.float64).mean() / 255 for image in images])


@pytest.fixture()
def items(tmp_path: Path) -> list:
    """Seven rendered images (4 batches of 2) with sidecar prompts."""
    for i in range(7):
        rng = random.Random(i)
        spec = random_spec(rng)
        Image.fromarray(render(spec, rng)[0]).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(spec.caption)
    return collect_items([str(tmp_path / f"{i}.png") for i in range(7)])


def job(items, out: Path | None, processes: Processes | None = None) -> ScoreJob:
    return ScoreJob(items, 2, out, score_settings(items, ["brightness"], {}, None, None, 2), processes or Processes())


def other_finished(parts: Path, index: int):
    """A barrier for a simulated launch: the other process `index` reports its share finished."""
    def barrier() -> None:
        path = parts / STATUS_DIR / f"{PHASE}-{index:05d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"done": 0, "state": "finished", "error": None}))
    return barrier


def recorded(parts: Path) -> list[str]:
    return sorted(p.name for p in parts.glob("chunk-*.json"))


def test_an_interrupted_job_keeps_its_batches_and_a_rerun_scores_the_rest(items, tmp_path: Path):
    out = tmp_path / "scores.csv"
    first = job(items, out)
    first.open()
    run = first.run(lambda: [Brightness(interrupt_at=2)], progress=False)
    assert run.interrupted and np.isfinite(run.scores["brightness"][:2]).all()
    assert run.failed == [2, 3, 4, 5, 6] and run.error_of(6) == "not scored: interrupted"
    assert recorded(parts_folder(out)) == ["chunk-000000.json"]
    again = job(items, out)
    again.open()
    scorer = Brightness()
    resumed = again.run(lambda: [scorer], progress=False)
    assert scorer.calls == 3  # batches 1, 2 and 3
    reference = score_items(items, [Brightness()], 2, progress=False)
    assert resumed.errors == reference.errors and not resumed.interrupted
    assert resumed.scores["brightness"].tolist() == reference.scores["brightness"].tolist()
    again.close()
    assert not parts_folder(out).exists()


def test_the_merge_names_a_batch_another_process_did_not_record(items, tmp_path: Path):
    out = tmp_path / "scores.csv"
    parts = parts_folder(out)
    main = job(items, out, Processes(0, 2, barrier=other_finished(parts, 1)))
    main.open()
    with pytest.raises(ValueError) as missing:
        main.run(lambda: [Brightness()], progress=False)  # process 1 says it finished, but recorded nothing
    assert str(missing.value) == (
        f"{parts}: no record of images 3-4 of 7, from {items[2].file} (chunk 1 of 4, the share of process 1 of 2): "
        "it was not computed (rerun the same command to compute it), or was written where this process cannot see "
        "it (on several nodes the output must be on a filesystem every node shares)"
    )
    assert recorded(parts) == ["chunk-000000.json", "chunk-000002.json"]  # kept for the rerun


def test_another_process_scores_its_share_and_returns_nothing(items, tmp_path: Path):
    out = tmp_path / "scores.csv"
    parts = parts_folder(out)
    other_finished(parts, 0)()
    second = job(items, out, Processes(1, 2))
    second.open()
    assert second.run(lambda: [Brightness()], progress=False) is None
    assert recorded(parts) == ["chunk-000001.json", "chunk-000003.json"]


def test_each_process_stops_when_a_scorer_fails_on_its_first_batch(items, tmp_path: Path):
    bad = collect_items([item.file for item in items], prompt="bad")
    out = tmp_path / "scores.csv"
    other_finished(parts_folder(out), 0)()
    with pytest.raises(ScorerFailure, match="failed on all 2 images of the first batch, e.g. .*2.png"):
        job(bad, out, Processes(1, 2)).run(lambda: [Brightness()], progress=False)
    assert recorded(parts_folder(out)) == []
    alone = job(bad[:2], tmp_path / "alone.csv")  # one batch in all: its failures are the images' errors
    alone.open()
    assert alone.run(lambda: [Brightness()], progress=False).failed == [0, 1]


def test_without_out_one_process_scores_in_memory_and_several_are_refused(items):
    alone = job(items, None)
    alone.open()
    run = alone.run(lambda: [Brightness()], progress=False)
    assert run.scores["brightness"].tolist() == score_items(items, [Brightness()], 2, False).scores["brightness"].tolist()
    with pytest.raises(ValueError, match=r"^with 2 processes give --out FILE: the processes meet through files"):
        job(items, None, Processes(0, 2)).open()

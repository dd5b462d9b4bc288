"""`diffalign score` on 2 processes (gloo): the --out file of 2 processes is the file of 1, byte for byte (csv,
parquet, the --pairs report), an undecodable image is listed and counted once, and a job failing in one process
resumes with the same command, scoring only the batches without a record."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from PIL import Image

from diffalign.data.pairs import write_pair_table
from diffalign.synthetic.domain import random_spec
from diffalign.synthetic.render import render

from .launch import Job, register, run_one

ADDRESS = re.compile(r" at 0x[0-9a-f]+")
SCORE = ["--scorer", "shapes", "--batch-size", "2", "--no-progress"]


def images(folder: Path) -> Path:
    """Six rendered scenes (32 and 48 px), an undecodable PNG and a missing file, all in metadata.jsonl: 7
    images to score, 4 batches of 2."""
    root = folder / "samples"
    root.mkdir()
    lines = []
    for i in range(6):
        rng = random.Random(i)
        spec = random_spec(rng)
        image = Image.fromarray(render(spec, rng)[0])
        (image if i % 3 else image.resize((48, 48))).save(root / f"{i}.png")
        lines.append({"file_name": f"{i}.png", "prompt": spec.caption})
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    lines.insert(3, {"file_name": "corrupt.png", "prompt": "a red circle on a blue background"})
    lines.append({"file_name": "gone.png", "prompt": "a red circle on a blue background"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def pair_table(folder: Path) -> Path:
    """Five pairs (one human tie, one undecodable image) as a Pick-a-Pic-schema parquet file."""
    rng = random.Random(7)
    rows: dict[str, list] = {"caption": [], "jpg_0": [], "jpg_1": [], "label_0": [], "label_1": []}
    for i in range(5):
        spec = random_spec(rng)
        rows["caption"].append(spec.caption)
        rows["jpg_0"].append(render(spec, rng)[0])
        rows["jpg_1"].append(b"not an image" if i == 3 else render(random_spec(rng), rng)[0])
        label = 0.5 if i == 1 else float(i % 2 == 0)
        rows["label_0"].append(label)
        rows["label_1"].append(1 - label)
    path = folder / "pairs.parquet"
    write_pair_table(path, rows)
    return path


def argv(folder: Path, out: str) -> list[str]:
    return ["score", str(folder / "samples"), *SCORE, "--out", str(folder / out)]


def pairs_argv(folder: Path, out: str) -> list[str]:
    return ["score", "--pairs", str(folder / "pairs.parquet"), *SCORE, "--tie-aware", "0,0.5", "--out", str(folder / out)]


def build(folder: Path) -> list[Job]:
    images(folder)
    pair_table(folder)
    return [
        Job("score-csv", argv(folder, "two.csv")),
        Job("score-parquet", argv(folder, "two.parquet")),
        Job("score-pairs", pairs_argv(folder, "two.json")),
        Job("score-fault", argv(folder, "resumed.csv"), fault={"process": 1, "after": 1, "how": "raise"}),
        Job("score-resume", argv(folder, "resumed.csv")),
    ]


register("score", build)


def test_two_processes_write_the_file_of_one(launched, capsys):
    folder = launched.folders["score"]
    for name, out in (("score-csv", "two.csv"), ("score-parquet", "two.parquet")):
        assert launched.main.rc(name) == [1, 0], launched.main.describe(name)  # 1: two images could not be scored
        assert launched.main.records(name) == [2, 2]  # batches 0, 2 and 1, 3
        one = out.replace("two", "one")
        assert run_one(argv(folder, one)) == 1
        assert (folder / out).read_bytes() == (folder / one).read_bytes()
        assert not (folder / f".{out}.parts").exists()  # the records are removed once merged
    err = launched.main.err("score-csv", 0)
    assert err.count("2 image(s) could not be scored") == 1 and err.count("corrupt.png: cannot read image") == 1
    assert "gone.png: not found" in err
    assert launched.main.err("score-csv", 1) == ""  # the other process prints nothing


def test_two_processes_measure_the_agreement_of_one(launched):
    folder = launched.folders["score"]
    assert launched.main.rc("score-pairs") == [1, 0], launched.main.describe("score-pairs")
    assert launched.main.records("score-pairs") == [3, 2]  # 10 images (the human tie included) in 5 batches
    assert run_one(pairs_argv(folder, "one.json")) == 1
    # an undecodable image's error may quote Pillow's message, naming its BytesIO by an address that differs by run
    two, one = ((folder / name).read_text() for name in ("two.json", "one.json"))
    assert ADDRESS.sub("", two) == ADDRESS.sub("", one)
    report = json.loads((folder / "two.json").read_text())
    assert [(e["row"], e["image"]) for e in report["errors"]] == [(3, "jpg_1")]


def test_a_job_failing_in_one_process_resumes_with_only_the_missing_batches(launched):
    folder = launched.folders["score"]
    rc = launched.main.rc("score-fault")
    assert rc[0] != 0 and rc[1] == 1, launched.main.describe("score-fault")  # process 0 stops on 1's failure
    assert "process 1 of 2 failed: RuntimeError: injected fault" in launched.main.err("score-fault", 0)
    assert launched.main.records("score-fault") == [2, 1]  # process 1 failed before recording batch 3
    assert launched.main.rc("score-resume") == [1, 0], launched.main.describe("score-resume")
    assert launched.main.records("score-resume") == [0, 1]  # only batch 3 scored again
    assert run_one(argv(folder, "resumed-one.csv")) == 1
    assert (folder / "resumed.csv").read_bytes() == (folder / "resumed-one.csv").read_bytes()

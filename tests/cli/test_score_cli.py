import json
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffalign.cli.main import main
from diffalign.data.pairs import write_pair_table
from diffalign.evaluation.score_files import read_scorer_summaries, read_scores
from diffalign.evaluation.winrate import wilson_interval
from diffalign.processes import ChunkRecords
from diffalign.synthetic.domain import COLOURS, SHAPES, random_spec
from diffalign.synthetic.render import render


def render_scene(seed: int, size: int = 32) -> tuple[Image.Image, str]:
    rng = random.Random(seed)
    spec = random_spec(rng)
    image = Image.fromarray(render(spec, rng)[0])
    return (image if size == 32 else image.resize((size, size), Image.BICUBIC)), spec.caption


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    """Three rendered scenes (32 and 64 px) with prompts in metadata.jsonl."""
    root = tmp_path / "samples"
    root.mkdir()
    lines = []
    for i, size in enumerate([32, 64, 32]):
        image, caption = render_scene(i, size)
        image.save(root / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "prompt": caption}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_folder_with_mixed_sizes_scores_everything_exit_0(image_folder: Path, tmp_path: Path, capsys):
    out = tmp_path / "scores.json"
    assert main(["score", str(image_folder), "--scorer", "shapes", "--out", str(out), "--no-progress"]) == 0
    rows = read_scores(out)
    assert [Path(r["file"]).name for r in rows] == ["0.png", "1.png", "2.png"]
    assert all(r["error"] is None and 0.5 < r["shapes"] <= 1 for r in rows)  # rendered scenes meet their captions
    summary = read_scorer_summaries(out)["shapes"]
    assert summary["n"] == 3 and summary["scale"] == "mean attribute score in [0, 1]"
    assert summary["mean"] == pytest.approx(np.mean([r["shapes"] for r in rows]))
    printed = capsys.readouterr().out
    assert "mean attribute score in [0, 1]" in printed and f"scores of 3 image(s) in {out}" in printed


def test_corrupt_and_non_image_files_are_reported_and_the_rest_scored(image_folder: Path, tmp_path: Path, capsys):
    (image_folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    (image_folder / "clip.mp4").write_bytes(b"\0\0\0\x18ftypmp42")
    with (image_folder / "metadata.jsonl").open("a") as f:
        f.write(json.dumps({"file_name": "corrupt.png", "prompt": "a red circle on a blue background"}) + "\n")
    out = tmp_path / "scores.csv"
    code = main(["score", str(image_folder), "--scorer", "shapes", "--out", str(out), "--no-progress"])
    assert code == 1
    rows = {Path(r["file"]).name: r for r in read_scores(out)}
    assert set(rows) == {"0.png", "1.png", "2.png", "corrupt.png", "clip.mp4"}
    assert all(rows[f"{i}.png"]["shapes"] is not None and rows[f"{i}.png"]["error"] is None for i in range(3))
    assert rows["corrupt.png"]["shapes"] is None and "cannot read image" in rows["corrupt.png"]["error"]
    assert rows["clip.mp4"]["shapes"] is None and "not a supported image type ('.mp4')" in rows["clip.mp4"]["error"]
    err = capsys.readouterr().err
    assert "2 image(s) could not be scored" in err
    assert f"{image_folder / 'corrupt.png'}: cannot read image" in err and "clip.mp4: not a supported image type" in err


def test_files_with_prompt_option_or_sidecars(tmp_path: Path, capsys):
    image, caption = render_scene(0)
    image.save(tmp_path / "x.png")
    assert main(["score", str(tmp_path / "x.png"), "--prompt", caption, "--scorer", "shapes", "--no-progress"]) == 0
    with_prompt = capsys.readouterr().out
    (tmp_path / "x.txt").write_text(caption)
    assert main(["score", str(tmp_path / "x.png"), "--scorer", "shapes", "--no-progress"]) == 0
    with_sidecar = capsys.readouterr().out
    assert with_prompt == with_sidecar and f"{tmp_path / 'x.png'}  " in with_sidecar  # per-image line without --out


def test_images_without_prompts_are_a_usage_error_saying_how(tmp_path: Path, capsys):
    render_scene(0)[0].save(tmp_path / "x.png")
    assert main(["score", str(tmp_path), "--scorer", "shapes", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no prompt for any of the 1 image(s)" in err and '--prompt ""' in err and "x.txt" in err


def test_usage_errors_exit_2(image_folder: Path, tmp_path: Path, capsys):
    assert main(["score", str(image_folder), "--scorer", "shapse"]) == 2
    assert "unknown scorer 'shapse'; did you mean 'shapes'?" in capsys.readouterr().err
    assert main(["score", str(image_folder)]) == 2
    assert "choose the scorer(s) with --scorer" in capsys.readouterr().err
    assert main(["score", str(image_folder), "--scorer", "shapes", "--scorer-option", "shapes.colour=red"]) == 2
    assert "scorer 'shapes' has no option 'colour'" in capsys.readouterr().err
    assert main(["score", str(image_folder), "--scorer", "shapes", "--out", str(tmp_path / "s.xlsx")]) == 2
    assert "unknown output type '.xlsx'" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "missing"), "--scorer", "shapes"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["score", str(image_folder), "--scorer", "shapes", "--tie-aware", "0.1"]) == 2
    assert "--tie-aware applies to --pairs" in capsys.readouterr().err


def test_an_output_path_that_cannot_be_written_fails_before_scoring(image_folder: Path, tmp_path: Path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert main(["score", str(image_folder), "--scorer", "shapes", "--out", str(blocker / "s.csv")]) == 2
    assert f"--out {blocker / 's.csv'}: folder {blocker} is a file, not a folder" in capsys.readouterr().err
    (tmp_path / "taken.csv").mkdir()
    assert main(["score", str(image_folder), "--scorer", "shapes", "--out", str(tmp_path / "taken.csv")]) == 2
    assert f"--out {tmp_path / 'taken.csv'} is a folder: give the file to write" in capsys.readouterr().err


def wrong_spec(spec, rng: random.Random):
    """The same scene with another shape colour and another shape: clearly worse for the caption."""
    colour = rng.choice([c for c in COLOURS if c not in (spec.colour, spec.background)])
    return replace(spec, colour=colour, shape=rng.choice([s for s in SHAPES if s != spec.shape]))


def pick_a_pic_table(path: Path) -> dict:
    """Pairs whose better image is known: 8 labelled right, 3 mislabelled, 1 pair of identical images
    (a score tie), 2 human ties and 1 pair with undecodable bytes."""
    rng = random.Random(0)
    rows = {"caption": [], "jpg_0": [], "jpg_1": [], "label_0": [], "label_1": []}
    kinds = ["right"] * 8 + ["mislabelled"] * 3 + ["same", "human tie", "human tie", "corrupt"]
    for i, kind in enumerate(kinds):
        spec = random_spec(rng)
        good = render(spec, rng)[0]
        bad = render(wrong_spec(spec, rng), rng)[0]
        good_first = i % 2 == 0
        first, second = (good, bad) if good_first else (bad, good)
        label_0 = float(good_first)
        if kind == "mislabelled":
            label_0 = 1 - label_0
        elif kind == "same":
            second = first
        elif kind == "human tie":
            label_0 = 0.5
        elif kind == "corrupt":
            second = b"not an image"
        rows["caption"].append(spec.caption)
        rows["jpg_0"].append(first)
        rows["jpg_1"].append(second)
        rows["label_0"].append(label_0)
        rows["label_1"].append(1 - label_0)
    write_pair_table(path, rows)
    return {"agreed": 8, "disagreed": 3, "score_ties": 1, "label_ties": 2, "unscored": 1}


def test_pairs_agreement_of_shapes_with_known_labels(tmp_path: Path, capsys):
    table = tmp_path / "pairs.parquet"
    expected = pick_a_pic_table(table)
    out = tmp_path / "agreement.json"
    code = main(["score", "--pairs", str(table), "--scorer", "shapes", "--tie-aware", "0,1", "--out", str(out), "--no-progress"])
    assert code == 1  # the corrupt pair
    report = json.loads(out.read_text())
    result = report["scorers"]["shapes"]
    assert {key: result[key] for key in expected} == expected
    assert result["n"] == 11 and result["accuracy"] == pytest.approx(8 / 11)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx(wilson_interval(8, 11))
    assert report["rows"] == 15 and report["label_ties"] == 2 and report["decided"] == 13
    assert [(e["row"], e["image"]) for e in report["errors"]] == [(14, "jpg_1")]
    strict, everything_tied = result["tie_aware"]
    assert everything_tied["threshold"] == 1 and everything_tied["predicted_ties"] == everything_tied["pairs"] == 14
    # every prediction a tie: 0.5 per decided pair, 1 per human tie
    assert everything_tied["credit"] == pytest.approx(12 * 0.5 + 2 * 1)
    assert strict["pairs"] == 14 and strict["predicted_ties"] == 1  # the identical pair
    assert strict["credit"] == pytest.approx(8 + 0.5 + 2 * 0.5)
    printed = capsys.readouterr()
    assert "72.7 %" in printed.out and "2 human ties" in printed.out
    assert "pairs.parquet row 14 jpg_1: " in printed.err


def test_folder_of_pair_shards_as_plain_input_scores_both_images(tmp_path: Path):
    pick_a_pic_table(tmp_path / "shards" / "part-0.parquet")
    out = tmp_path / "scores.jsonl"
    assert main(["score", str(tmp_path / "shards"), "--scorer", "shapes", "--out", str(out), "--no-progress"]) == 1
    rows = read_scores(out)
    assert len(rows) == 30 and [(r["row"], r["image"]) for r in rows[:2]] == [(0, "jpg_0"), (0, "jpg_1")]
    assert rows[0]["shapes"] > rows[1]["shapes"]  # row 0 has the right image first


def test_score_help_lists_scorers_and_exit_codes():
    out = subprocess.run(
        [sys.executable, "-m", "diffalign.cli.main", "score", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "usage: diffalign score" in out and "shapes" in out.split("scorers:")[1]
    assert "exit status: 0" in out and "--scorer-option NAME.KEY=VALUE" in out
    assert "accelerate launch --num_processes N -m diffalign.cli.main score" in out


RECORD_WRITE = ChunkRecords.write


def count_records(monkeypatch, fail_at: int | None = None) -> list[int]:
    """The chunks whose records are written from now on; with `fail_at`, writing the fail_at-th one raises."""
    written: list[int] = []
    original = RECORD_WRITE

    def write(self, chunk: int, record: dict) -> None:
        if fail_at is not None and len(written) + 1 == fail_at:
            raise RuntimeError("killed")
        original(self, chunk, record)
        written.append(chunk)

    monkeypatch.setattr(ChunkRecords, "write", write)
    return written


def test_a_failed_run_resumes_with_the_same_command_and_refuses_other_settings(image_folder, tmp_path, monkeypatch,
                                                                             capsys):
    from diffalign.evaluation.score_job import parts_folder

    command = ["score", str(image_folder), "--scorer", "shapes", "--batch-size", "1", "--no-progress"]
    assert main([*command, "--out", str(tmp_path / "reference.csv")]) == 0
    out = tmp_path / "scores.csv"
    parts = parts_folder(out)
    count_records(monkeypatch, fail_at=2)
    with pytest.raises(RuntimeError, match="killed"):
        main([*command, "--out", str(out)])
    assert not out.exists() and sorted(p.name for p in parts.glob("chunk-*")) == ["chunk-000000.json"]
    capsys.readouterr()
    assert main([*command[:-3], "--batch-size", "2", "--no-progress", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith(
        f"diffalign score: error: --out {out}: {parts} holds the scores of an unfinished job with other settings "
        f"(batch size: 1 there, 2 now): rerun it with the same settings to resume it, or delete {parts} to start over\n"
    )
    render_scene(5)[0].save(image_folder / "new.png")
    (image_folder / "new.txt").write_text("a red circle on a blue background")
    assert main([*command, "--dtype", "fp32", "--out", str(out)]) == 2
    assert "other settings (images: 3 there, 4 now; also dtype): rerun it" in capsys.readouterr().err
    (image_folder / "new.png").unlink()
    written = count_records(monkeypatch)
    assert main([*command, "--out", str(out)]) == 0
    assert written == [1, 2]  # the batches without a record
    assert out.read_bytes() == (tmp_path / "reference.csv").read_bytes() and not parts.exists()


def test_a_stale_record_of_another_job_is_refused(image_folder, tmp_path, capsys):
    from diffalign.evaluation.score_job import parts_folder

    out = tmp_path / "scores.csv"
    foreign = ChunkRecords(parts_folder(out), "0123456789abcdef", 3)
    foreign.write(0, {"count": 1, "scores": {"shapes": [0.5]}, "errors": [[]]})
    assert main(["score", str(image_folder), "--scorer", "shapes", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"diffalign score: error: {foreign.path(0)}: a foreign chunk record, written by a job with "
                          "other settings (fingerprint 0123456789abcdef, this job's ")
    assert f"this folder holds another job's work: use another output, or delete {parts_folder(out)} to start over" in err
    assert not out.exists()
    settings = parts_folder(out) / "settings.json"
    settings.write_text("{broken")
    assert main(["score", str(image_folder), "--scorer", "shapes", "--out", str(out), "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith(
        f"diffalign score: error: {settings}: not valid JSON (Expecting property name enclosed in double quotes: line 1 "
        f"column 2 (char 1)); delete {parts_folder(out)} to start over\n")


def test_several_processes_need_out_and_the_others_print_nothing(image_folder, tmp_path, monkeypatch, capsys):
    import diffalign.evaluation.score_job as score_job
    from diffalign.processes import STATUS_DIR, Processes

    command = ["score", str(image_folder), "--scorer", "shapes", "--batch-size", "1", "--no-progress"]
    monkeypatch.setattr("diffalign.processes.current_processes", lambda: Processes(0, 2))
    assert main(command) == 2
    assert capsys.readouterr().err.startswith(
        "diffalign score: error: with 2 processes give --out FILE: the processes meet through files (each records its "
        "batches beside FILE, the main process merges them into it)\n")
    table = tmp_path / "pairs.parquet"
    pick_a_pic_table(table)
    assert main(["score", "--pairs", str(table), "--scorer", "shapes"]) == 2
    assert "with 2 processes give --out FILE" in capsys.readouterr().err
    out = tmp_path / "scores.csv"
    status = score_job.parts_folder(out) / STATUS_DIR / "score-00000.json"
    status.parent.mkdir(parents=True)
    status.write_text(json.dumps({"done": 0, "state": "finished", "error": None}))  # the main process, done
    monkeypatch.setattr("diffalign.processes.current_processes", lambda: Processes(1, 2))
    written = count_records(monkeypatch)
    assert main([*command, "--out", str(out)]) == 0 and written == [1]
    assert capsys.readouterr() == ("", "") and not out.exists()
    monkeypatch.undo()
    written = count_records(monkeypatch)
    assert main([*command, "--out", str(out)]) == 0 and written == [0, 2]  # one process takes over the rest
    assert main([*command, "--out", str(tmp_path / "one.csv")]) == 0
    assert out.read_bytes() == (tmp_path / "one.csv").read_bytes()

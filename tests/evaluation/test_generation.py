"""`generate_folder`: one image per (prompt, seed), metadata per image, resumable, refuses mixed settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from diffalign.evaluation.generation import (
    SamplingSettings,
    generate_folder,
    image_name,
)
from diffalign.evaluation.model_specs import ModelSpec
from diffalign.evaluation.prompt_sets import Prompt, PromptSet
from diffalign.processes import Processes

from .process_doubles import main_of_two

FAST = SamplingSettings(steps=2, size=32, dtype="float32")


def prompt_set(*texts: str) -> PromptSet:
    return PromptSet("test", "test", [Prompt(t, "cat-a" if i % 2 else "cat-b") for i, t in enumerate(texts)])


def pixels(path):
    return np.asarray(Image.open(path))


def metadata_keys(folder):
    return [(r["prompt_index"], r["seed"]) for r in map(json.loads, (folder / "metadata.jsonl").read_text().splitlines())]


def test_images_metadata_and_resume(tiny_models, tmp_path):
    model = ModelSpec("base", str(tiny_models["sd15"]))
    prompts = prompt_set("a red circle", "a blue square", "a green triangle")
    out = tmp_path / "gen"
    first = generate_folder(model, prompts, [0, 1], out, FAST, batch_size=4, device="cpu", progress=False)
    assert (first.written, first.skipped, first.total) == (6, 0, 6)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert sorted((r["prompt_index"], r["seed"]) for r in rows) == [(i, s) for i in range(3) for s in (0, 1)]
    row = next(r for r in rows if (r["prompt_index"], r["seed"]) == (1, 1))
    assert row["file_name"] == image_name(1, 1) == "p00001-s1.png"
    assert row["prompt"] == "a blue square" and row["category"] == "cat-a"
    assert (row["model"], row["sampler"], row["steps"], row["width"], row["dtype"]) == (
        str(tiny_models["sd15"]), "ddim", 2, 32, "float32")
    settings = json.loads((out / "generation.json").read_text())
    assert settings["seeds"] == [0, 1] and settings["prompts"] == 3

    before = pixels(out / image_name(2, 0))
    (out / image_name(2, 0)).unlink()  # a lost image and a line cut short by a crash are drawn again
    with (out / "metadata.jsonl").open("a") as f:
        f.write('{"file_name": "p0000')
    again = generate_folder(model, prompts, [0, 1], out, FAST, batch_size=4, device="cpu", progress=False)
    assert (again.written, again.skipped) == (1, 5)
    np.testing.assert_array_equal(pixels(out / image_name(2, 0)), before)  # independent of batch composition
    assert metadata_keys(out) == [(i, s) for i in range(3) for s in (0, 1)]  # in image order, the redrawn one too

    more = generate_folder(model, prompts, [0, 1, 2], out, FAST, batch_size=4, device="cpu", progress=False)
    assert (more.written, more.skipped, more.total) == (3, 6, 9)  # a new seed adds its images only
    fewer = generate_folder(model, prompts, [2], out, FAST, batch_size=4, device="cpu", progress=False)
    assert (fewer.written, fewer.total) == (0, 3)
    assert metadata_keys(out) == [(i, s) for i in range(3) for s in (0, 1, 2)]  # the other seeds' lines are kept
    (out / image_name(0, 2)).unlink()
    generate_folder(model, prompts, [2], out, FAST, batch_size=4, device="cpu", progress=False)
    assert metadata_keys(out) == [(0, 2), (1, 2), (2, 2), *((i, s) for i in range(3) for s in (0, 1))]


def test_mixed_settings_or_prompt_sets_are_refused(tiny_models, tmp_path):
    model = ModelSpec("base", str(tiny_models["sd15"]))
    out = tmp_path / "gen"
    generate_folder(model, prompt_set("a red circle"), [0], out, FAST, device="cpu", progress=False)
    with pytest.raises(ValueError, match="steps=2, not 3"):
        generate_folder(model, prompt_set("a red circle"), [0], out, SamplingSettings(steps=3, size=32, dtype="float32"),
                        device="cpu", progress=False)
    with pytest.raises(ValueError, match="belongs to another prompt set"):
        generate_folder(model, prompt_set("a blue square"), [0], out, FAST, device="cpu", progress=False)


def test_a_run_that_drew_nothing_binds_no_settings(tiny_models, tmp_path, monkeypatch):
    import diffalign.sampling.generate as sampling

    model = ModelSpec("base", str(tiny_models["sd15"]))
    out = tmp_path / "gen"

    def broken(*args, **kwargs):
        raise ValueError("LoRA x does not fit the model")

    with monkeypatch.context() as patch:
        patch.setattr(sampling, "load_pipeline", broken)
        with pytest.raises(ValueError, match="does not fit"):
            generate_folder(model, prompt_set("a red circle"), [0], out, SamplingSettings(steps=3, size=32,
                            dtype="float32"), device="cpu", progress=False)
    done = generate_folder(model, prompt_set("a red circle"), [0], out, FAST, device="cpu", progress=False)
    assert done.written == 1


def test_lora_scale_is_applied(tiny_models, make_lora, tmp_path):
    base = str(tiny_models["sd15"])
    make_lora(base, tmp_path / "lora", 0.2)
    prompts = prompt_set("a red circle")
    images = {}
    for name, loras in (("base", []), ("off", [(str(tmp_path / "lora"), 0.0)]), ("on", [(str(tmp_path / "lora"), 1.0)])):
        generate_folder(ModelSpec(name, base, None, loras), prompts, [0], tmp_path / name, FAST, device="cpu",
                        progress=False)
        images[name] = pixels(tmp_path / name / image_name(0, 0)).astype(int)
    assert np.abs(images["off"] - images["base"]).max() <= 1  # scale 0: the base model (up to rounding)
    assert np.abs(images["on"] - images["base"]).max() > 5
    meta = json.loads((tmp_path / "on" / "metadata.jsonl").read_text().splitlines()[0])
    assert meta["loras"] == [{"path": str(tmp_path / "lora"), "scale": 1.0}]


def visible_files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_job_stopped_with_a_process_missing_resumes_on_one_process(tiny_models, tmp_path):
    model = ModelSpec("base", str(tiny_models["sd15"]))
    prompts = prompt_set("a red circle", "a blue square", "a green triangle")
    fresh = tmp_path / "fresh"
    generate_folder(model, prompts, [0, 1], fresh, FAST, batch_size=2, device="cpu", progress=False)

    out = tmp_path / "gen"
    two = main_of_two([(out, "generate")])  # process 1 draws nothing: batch 1 (prompt 1) is missing at the merge
    with pytest.raises(ValueError) as missing:
        generate_folder(model, prompts, [0, 1], out, FAST, batch_size=2, device="cpu", progress=False, processes=two)
    assert str(missing.value) == (
        f"{out / '.batches'}: no record of batch 1 (p00001-s0.png to p00001-s1.png) (chunk 1 of 3, the share of process "
        "1 of 2): it was not computed (rerun the same command to compute it), or was written where this process cannot "
        "see it (on several nodes the output must be on a filesystem every node shares)"
    )
    assert not (out / "metadata.jsonl").exists()  # batches 0 and 2 are drawn and recorded, not merged

    with pytest.raises(ValueError, match="was generated with steps=2, not 3"):  # the records bind the settings
        generate_folder(model, prompts, [0, 1], out, SamplingSettings(steps=3, size=32, dtype="float32"),
                        batch_size=2, device="cpu", progress=False)
    again = generate_folder(model, prompts, [0, 1], out, FAST, batch_size=2, device="cpu", progress=False)
    assert (again.written, again.skipped) == (2, 4)  # batch 1 only
    assert visible_files(out) == visible_files(fresh)
    assert not (out / ".batches").exists()


def test_the_merge_refuses_a_record_of_another_job(tiny_models, tmp_path):
    model = ModelSpec("base", str(tiny_models["sd15"]))
    out = tmp_path / "gen"
    foreign = out / ".batches" / "chunk-000001.json"

    def other_job_records_batch_1():
        foreign.parent.mkdir(parents=True, exist_ok=True)
        foreign.write_text(json.dumps({"fingerprint": "0123456789abcdef", "chunk": 1, "rows": []}))

    two = main_of_two([(out, "generate")], before=other_job_records_batch_1)
    with pytest.raises(ValueError) as refused:
        generate_folder(model, prompt_set("a red circle", "a blue square"), [0], out, FAST, batch_size=1,
                        device="cpu", progress=False, processes=two)
    assert str(refused.value).startswith(
        f"{foreign}: a foreign chunk record, written by a job with other settings (fingerprint 0123456789abcdef, "
        "this job's ")
    assert str(refused.value).endswith(f"this folder holds another job's work: use another output, or delete "
                                       f"{out / '.batches'} to start over")


def test_a_numbered_gpu_is_refused_with_several_processes(tmp_path):
    with pytest.raises(ValueError, match=r"--device cuda:1: with 2 processes each process takes its own GPU"):
        generate_folder(ModelSpec("base", "unused"), prompt_set("a red circle"), [0], tmp_path / "gen", FAST,
                        device="cuda:1", progress=False, processes=Processes(0, 2))
    assert not (tmp_path / "gen").exists()


def test_a_process_that_cannot_see_the_main_process_folder_says_so(tmp_path):
    out = tmp_path / "gen"  # the main process (on another node) wrote generation.json where this one cannot see it
    with pytest.raises(FileNotFoundError) as unseen:
        generate_folder(ModelSpec("base", "unused"), prompt_set("a red circle"), [0], out, FAST, device="cpu",
                        progress=False, processes=Processes(1, 2))
    assert str(unseen.value) == (
        f"{out / 'generation.json'} is missing: the main process writes it before the others start, so this process "
        "does not see the main process's output folder (on several nodes the output must be on a filesystem every "
        "node shares)"
    )

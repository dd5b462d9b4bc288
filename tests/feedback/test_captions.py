"""`diffalign captions`: the three strategies, the rule-based shapes captioner and perturber, tiny random-weight
transformers models (image-to-text and text-to-text / causal), resume, bad rows, and relabelling afterwards."""

from __future__ import annotations

import glob
import random
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from diffalign.cli.main import main
from diffalign.data.record import pair_fields
from diffalign.feedback import caption_dataset as caption_module
from diffalign.feedback.caption_dataset import CaptionJob, caption_dataset
from diffalign.feedback.captioners import ShapesCaptioner, ShapesPerturber, diversity_value
from diffalign.feedback.relabel_dataset import RelabelJob, relabel_dataset
from diffalign.synthetic.domain import SIZES, parse_caption, random_spec
from diffalign.synthetic.render import render

from ..processes.sharded import assert_same_dataset, simulated

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"a red blue green circle square triangle on background small "
         "large of picture the".split()]


def _read(out: Path) -> list[dict]:
    files = sorted(glob.glob(str(out / "data" / "*.parquet")))
    return datasets.load_dataset("parquet", data_files=files, split="train").to_list()


def test_the_shapes_captioner_says_what_a_rendered_image_shows():
    rng = random.Random(0)
    specs = [random_spec(rng) for _ in range(40)]
    images = [Image.fromarray(render(spec, rng)[0]) for spec in specs]
    said = [parse_caption(c) for c in ShapesCaptioner()(images, ["ignored"] * len(images))]
    right = [(s.colour, s.shape, s.background) == (spec.colour, spec.shape, spec.background) for s, spec in zip(said, specs)]
    assert sum(right) >= 36  # the reward's measurements: a rare small shape is misread
    sized = [(s.size, spec.size) for s, spec in zip(said, specs) if spec.size]
    assert all(s in SIZES for s, _ in sized) and sum(a == b for a, b in sized) >= 0.85 * len(sized)


@pytest.mark.parametrize("diversity,changes", [("weak", 1), ("medium", 2), ("strong", 3), (10, 1)])
def test_the_shapes_perturber_changes_one_attribute_per_30_points(diversity, changes):
    caption = "a small red circle on a blue background"
    out = ShapesPerturber(diversity, seed=3)([caption] * 5, list(range(5)))
    assert out == ShapesPerturber(diversity, seed=3)([caption] * 5, list(range(5)))  # seeded by (seed, row)
    for text in out:
        spec = parse_caption(text)
        changed = [spec.colour != "red", spec.shape != "circle", spec.background != "blue"]
        assert changed == [True] * changes + [False] * (3 - changes) and spec.size == "small"
    assert diversity_value("strong") == 80
    with pytest.raises(ValueError, match="unknown diversity 'huge'"):
        diversity_value("huge")


@pytest.mark.parametrize("strategy", ["captioning", "perturbation", "hybrid"])
def test_each_strategy_writes_a_caption_per_image(pair_file, tmp_path, strategy):
    job = CaptionJob(source=str(pair_file), out=tmp_path / strategy, strategy=strategy, captioner="shapes",
                     perturber="shapes", shard_size=5, batch_size=3, progress=False)
    result = caption_dataset(job)
    rows, source = _read(tmp_path / strategy), pq.read_table(pair_file).to_pylist()
    assert result.rows == len(rows) == len(source) and not result.errors  # 12 pairs and 2 ties
    captioner = ShapesCaptioner()
    for index, (row, original) in enumerate(zip(rows, source)):
        assert row["jpg_0"] == original["jpg_0"] and row["label_0"] == original["label_0"]
        images = [Image.open(__import__("io").BytesIO(row[f"jpg_{k}"])) for k in (0, 1)]
        said = captioner(images, ["", ""])
        tie = row["label_0"] not in (0, 1)
        w = 0 if row["label_0"] == 1 else 1
        if strategy == "captioning":
            assert [row["caption_0"], row["caption_1"]] == said
        elif strategy == "perturbation":
            if tie:
                assert row["caption_0"] == row["caption_1"] == row["caption"]
            else:
                assert row[f"caption_{w}"] == row["caption"]
                assert row[f"caption_{1 - w}"] == ShapesPerturber("medium")([row["caption"]], [index])[0]
        elif tie:
            assert [row["caption_0"], row["caption_1"]] == said
        else:
            assert row[f"caption_{w}"] == said[w]
            assert row[f"caption_{1 - w}"] == ShapesPerturber("medium")([said[w]], [index])[0]
        if not tie:  # what DCPO trains on: the winner's caption first
            assert pair_fields(row).own_captions == (row[f"caption_{w}"], row[f"caption_{1 - w}"])
    card = (tmp_path / strategy / "README.md").read_text()
    assert strategy in card and "caption_k` describes `jpg_k`" in card


def test_a_crash_resumes_to_the_same_dataset(pair_file, tmp_path, monkeypatch):
    def job(out):
        return CaptionJob(source=str(pair_file), out=out, strategy="hybrid", captioner="shapes", perturber="shapes",
                          diversity="strong", shard_size=4, batch_size=2, progress=False)

    whole = caption_dataset(job(tmp_path / "whole"))
    real = caption_module._caption_shard
    calls = []

    def crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(caption_module, "_caption_shard", crash)
    with pytest.raises(KeyboardInterrupt):
        caption_dataset(job(tmp_path / "resumed"))
    monkeypatch.setattr(caption_module, "_caption_shard", real)
    assert len(_read(tmp_path / "resumed")) == 8  # two shards kept
    resumed = caption_dataset(job(tmp_path / "resumed"))
    assert _read(tmp_path / "resumed") == _read(tmp_path / "whole") and resumed.rows == whole.rows == 14
    with pytest.raises(ValueError, match="diversity: 80 there, 40 now"):
        caption_dataset(CaptionJob(source=str(pair_file), out=tmp_path / "whole", strategy="hybrid", captioner="shapes",
                                   perturber="shapes", diversity="weak", shard_size=4, progress=False))


def test_bad_rows_are_listed_not_fatal(pair_file, tmp_path, capsys):
    table = pq.read_table(pair_file).to_pylist()
    table[2]["jpg_1"] = b"not an image"
    table[5]["caption"] = "an owl at night"  # the shapes perturber cannot perturb a caption outside its world
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(table), bad)
    status = main(["captions", str(bad), "--strategy", "perturbation", "--perturber", "shapes", "--out",
                   str(tmp_path / "out"), "--no-progress", "--batch-size", "4"])
    err = capsys.readouterr().err
    assert status == 1 and "2 row(s) left out" in err
    assert f"{bad} row 2: " in err and "jpg_1" in err and "row 5: CaptionError" in err
    assert len(_read(tmp_path / "out")) == len(table) - 2


def test_a_later_relabel_keeps_each_caption_with_its_image(pair_file, tmp_path):
    caption_dataset(CaptionJob(source=str(pair_file), out=tmp_path / "captioned", captioner="shapes", progress=False))
    result = relabel_dataset(RelabelJob(source=str(tmp_path / "captioned"), out=tmp_path / "relabelled",
                                        scorers=["shapes"], labels="scorer", progress=False))
    assert result.totals["flipped"] > 0
    before, after = _read(tmp_path / "captioned"), _read(tmp_path / "relabelled")
    flipped = 0
    for old, new in zip(before, after):
        for k in (0, 1):  # each caption stays with its image
            assert new[f"jpg_{k}"] == old[f"jpg_{k}"] and new[f"caption_{k}"] == old[f"caption_{k}"]
        if new["label_0"] in (0, 1) and old["label_0"] in (0, 1) and new["label_0"] != old["label_0"]:
            flipped += 1
            w = 0 if new["label_0"] == 1 else 1
            assert pair_fields(new).own_captions == (old[f"caption_{w}"], old[f"caption_{1 - w}"])
    assert flipped == result.totals["flipped"]


def test_the_job_refuses_bad_choices(pair_file, tmp_path):
    with pytest.raises(ValueError, match="--strategy hybrid needs --perturber"):
        CaptionJob(source=str(pair_file), out=tmp_path, strategy="hybrid", captioner="shapes").check()
    with pytest.raises(ValueError, match="--strategy captioning needs --captioner"):
        CaptionJob(source=str(pair_file), out=tmp_path).check()
    with pytest.raises(ValueError, match="source's own folder"):
        CaptionJob(source=str(pair_file), out=pair_file.parent, captioner="shapes").check()


@pytest.fixture(scope="module")
def tiny_text_models(tmp_path_factory) -> dict[str, Path]:
    """Random-weight BLIP (image-to-text), T5 (text-to-text) and GPT-2 (causal) with a 19-word BERT tokenizer."""
    from transformers import (BertTokenizerFast, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor, GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration)

    root = tmp_path_factory.mktemp("text-models")
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(WORDS)})
    v = len(WORDS)
    torch.manual_seed(0)
    blip = BlipForConditionalGeneration(BlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        text_config=dict(vocab_size=v, hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=64, bos_token_id=2, sep_token_id=3, pad_token_id=0, eos_token_id=3),
        projection_dim=16))
    blip.save_pretrained(root / "blip")
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok).save_pretrained(
        root / "blip")
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=v, d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=2,
                                             pad_token_id=0, eos_token_id=3, decoder_start_token_id=0))
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=v, n_embd=32, n_layer=1, n_head=2, n_positions=320, bos_token_id=2,
                                      eos_token_id=3, pad_token_id=0))
    for name, model in (("t5", t5), ("gpt2", gpt2)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return {"blip": root / "blip", "t5": root / "t5", "gpt2": root / "gpt2"}


@pytest.mark.parametrize("strategy,perturber", [("captioning", None), ("perturbation", "t5"), ("hybrid", "gpt2")])
def test_transformers_models_run_end_to_end(pair_file, tmp_path, tiny_text_models, strategy, perturber, capsys):
    args = ["captions", str(pair_file), "--strategy", strategy, "--out", str(tmp_path / "out"), "--no-progress",
            "--batch-size", "4", "--device", "cpu", "--seed", "1"]
    if strategy != "perturbation":
        args += ["--captioner", str(tiny_text_models["blip"])]
    if perturber:
        args += ["--perturber", str(tiny_text_models[perturber]), "--diversity", "strong"]
    status = main(args)
    err = capsys.readouterr().err
    rows = _read(tmp_path / "out")
    progress = __import__("json").loads((tmp_path / "out" / "progress.json").read_text())
    errors = [e for s in progress["shards"] for e in s["errors"]]
    # random weights: a row whose generation is all special tokens comes back empty and is listed, not fatal
    assert status == (1 if errors else 0) and len(rows) + len(errors) == 14 and len(rows) >= 7
    assert all("empty caption" in e["error"] for e in errors) and all(f"row {e['row']}:" in err for e in errors)
    assert all(row["caption_0"].strip() and row["caption_1"].strip() for row in rows)
    decided = [r for r in rows if r["label_0"] in (0, 1)]
    generated = [r[f"caption_{k}"] for r in rows for k in (0, 1)] if strategy == "captioning" else [
        r[f"caption_{1 if r['label_0'] == 1 else 0}"] for r in decided]  # the losers' perturbed captions
    assert generated and all(set(c.split()) <= set(WORDS) for c in generated)  # decoded from the tiny vocabulary
    if strategy == "perturbation":  # the winner keeps its prompt
        assert all(r[f"caption_{0 if r['label_0'] == 1 else 1}"] == r["caption"] for r in decided)
    card = (tmp_path / "out" / "README.md").read_text()
    assert str(tiny_text_models["blip" if strategy != "perturbation" else perturber]) in card


def test_a_sampling_perturber_writes_the_same_shards_on_two_processes(pair_file, tmp_path, tiny_text_models):
    """Each call of a sampling perturber is seeded from --seed and its first row, so a process that captions shards
    1 and 3 alone writes what one process writes after shards 0 and 2 (two processes simulated in turn)."""
    def job(out):
        return CaptionJob(source=str(pair_file), out=out, strategy="perturbation", perturber=str(tiny_text_models["gpt2"]),
                          diversity="strong", seed=5, shard_size=4, batch_size=2, device="cpu", progress=False)

    one = caption_dataset(job(tmp_path / "one"))
    two = tmp_path / "two"
    with pytest.raises(ValueError, match="no record of shard 1"):
        caption_dataset(job(two), simulated(0, two, "captions"))  # shards 0 and 2, then the merge misses shard 1
    assert caption_dataset(job(two), simulated(1, two, "captions")) is None  # shards 1 and 3 in a fresh process
    merged = caption_dataset(job(two), simulated(0, two, "captions"))
    assert_same_dataset(two, tmp_path / "one")
    assert merged.rows == one.rows and merged.errors == one.errors
    assert len({r["caption_0"] + r["caption_1"] for r in _read(two)}) > 5  # sampled captions, not all alike


def test_the_help_says_how_to_run_on_many_processes(capsys):
    with pytest.raises(SystemExit):
        main(["captions", "--help"])
    assert "accelerate launch --num_processes N -m diffalign.cli.main captions SOURCE --out OUT" in capsys.readouterr().out

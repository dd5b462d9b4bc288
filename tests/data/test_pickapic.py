"""Pick-a-Pic v2 at scale: filters and their report, corrupt rows skipped, caption split, streaming, local pairs."""

from __future__ import annotations

import datetime
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

SCHEMA = pa.schema([
    ("are_different", pa.bool_()), ("best_image_uid", pa.string()), ("caption", pa.string()),
    ("created_at", pa.timestamp("ns")), ("has_label", pa.bool_()), ("image_0_uid", pa.string()),
    ("image_0_url", pa.string()), ("image_1_uid", pa.string()), ("image_1_url", pa.string()),
    ("jpg_0", pa.binary()), ("jpg_1", pa.binary()), ("label_0", pa.float64()), ("label_1", pa.float64()),
    ("model_0", pa.string()), ("model_1", pa.string()), ("ranking_id", pa.int64()), ("user_id", pa.int64()),
    ("num_example_per_prompt", pa.int64()), ("__index_level_0__", pa.int64()),
])


def png(value: int, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def row(i: int, caption: str, a: bytes, b: bytes, label: float, different: bool = True, **extra) -> dict:
    return {"are_different": different, "best_image_uid": f"u{i}", "caption": caption,
            "created_at": datetime.datetime(2023, 5, 1), "has_label": True, "image_0_uid": f"a{i}",
            "image_0_url": "", "image_1_uid": f"b{i}", "image_1_url": "", "jpg_0": a, "jpg_1": b,
            "label_0": label, "label_1": 1 - label, "model_0": "m0", "model_1": "m1", "ranking_id": 1000 + i,
            "user_id": 7, "num_example_per_prompt": 1, "__index_level_0__": i, **extra}


def mixed_rows() -> list[dict]:
    """10 rows: 0, 1, 8, 9 plain decided pairs; 2 tie; 3 are_different=False; 4 a duplicate of 0 (images
    swapped); 5 a corrupt jpg_1; 6 an invalid label (0.7); 7 the same bytes on both sides."""
    return [
        row(0, "a red circle", png(10), png(200), 1.0),
        row(1, "a blue square", png(20), png(210), 0.0),
        row(2, "a tie", png(30), png(220), 0.5),
        row(3, "same looking", png(40), png(230), 1.0, different=False),
        row(4, "a red circle", png(200), png(10), 0.0),
        row(5, "a broken one", png(50), b"\x89PNG truncated", 1.0),
        row(6, "odd label", png(60), png(240), 0.7),
        row(7, "twins", png(70), png(70), 1.0),
        row(8, "a green star", png(80), png(250), 1.0),
        row(9, "a white moon", png(90), png(5), 0.0),
    ]


def write_rows(path: Path, rows: list[dict], schema: pa.Schema = SCHEMA) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {f.name: [r.get(f.name) for r in rows] for f in schema}
    pq.write_table(pa.table(columns, schema=schema), path)
    return path


# ---------------------------------------------------------------------------------------------- tests

import json  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from diffalign.data.filters import PairFilter, caption_subset  # noqa: E402
from diffalign.data.order import EpochBatches  # noqa: E402
from diffalign.data.pairs import PreferencePairs, load_pair_table  # noqa: E402
from diffalign.data.record import collate_items  # noqa: E402
from diffalign.data.skip_report import read_skipped  # noqa: E402
from diffalign.data.streaming import StreamingPairs  # noqa: E402


@pytest.fixture
def shard(tmp_path) -> Path:
    return write_rows(tmp_path / "shards" / "part-0.parquet", mixed_rows())


def test_default_filter_drops_ties_and_invalid_labels(shard):
    pairs = PreferencePairs(str(shard), resolution=8)
    assert (pairs.report.read, pairs.report.kept) == (10, 8)
    assert dict(pairs.report.dropped) == {"tie": 1, "invalid_label": 1}
    assert pairs.source_rows == [0, 1, 3, 4, 5, 7, 8, 9]
    assert "10 rows read, 8 kept, 2 dropped (1 tie, 1 invalid_label)" == pairs.report.describe()


def test_opt_in_filters_are_different_and_dedupe(shard):
    pairs = PreferencePairs(str(shard), resolution=8, pair_filter=PairFilter(require_different=True, dedupe=True))
    assert dict(pairs.report.dropped) == {"tie": 1, "invalid_label": 1, "not_different": 1, "duplicate": 1,
                                          "identical_images": 1}
    assert pairs.source_rows == [0, 1, 5, 8, 9]


def test_corrupt_image_is_skipped_reported_and_the_epoch_completes(shard, tmp_path):
    report = tmp_path / "out" / "skipped_rows.jsonl"
    pairs = PreferencePairs(str(shard), resolution=8, skip_report=report)
    sampler = EpochBatches(len(pairs), 2, seed=0)
    loader = torch.utils.data.DataLoader(pairs, batch_sampler=sampler, collate_fn=collate_items)
    batches = [b for _, b in zip(range(2 * sampler.batches_per_epoch), loader)]  # two whole epochs
    assert all(len(b) == 2 for b in batches)
    assert "a broken one" not in {c for b in batches for c in b.captions}
    skipped = read_skipped(report)
    assert [(s["row"], s["ranking_id"], s["column"]) for s in skipped] == [(5, 1005, "jpg_1")]
    assert len(report.read_text().splitlines()) == 1  # one line per bad row per process, not per encounter
    # the replacement is the next pair in table order, the same for the same key
    position = pairs.source_rows.index(5)
    assert pairs[(0, position)]["fields"].caption == pairs[(0, position + 1)]["fields"].caption == "twins"


def test_missing_column_names_found_and_expected_and_dual_captions(tmp_path, shard):
    schema = pa.schema([f for f in SCHEMA if f.name != "label_0"])
    bad = write_rows(tmp_path / "bad" / "part-1.parquet", mixed_rows(), schema)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['label_0'\].*found \['are_different'"):
        load_pair_table(str(bad))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['caption_0', 'caption_1'\]"):
        PreferencePairs(str(shard), resolution=8, dual_captions=True)


def test_pick_double_caption_reaches_the_batch(tmp_path):
    schema = SCHEMA.append(pa.field("caption_0", pa.string())).append(pa.field("caption_1", pa.string()))
    rows = [row(0, "p", png(1), png(2), 1.0, caption_0="c0 first", caption_1="c1 first"),
            row(1, "q", png(3), png(4), 0.0, caption_0="c0 second", caption_1="c1 second")]
    path = write_rows(tmp_path / "dcpo.parquet", rows, schema)
    pairs = PreferencePairs(str(path), resolution=8, dual_captions=True)
    batch = collate_items([pairs[0], pairs[1]])
    assert batch.captions == ["p", "q"]
    assert batch.w.own_captions == ["c0 first", "c1 second"] and batch.l.own_captions == ["c1 first", "c0 second"]
    stream = StreamingPairs(str(path), resolution=8, dual_captions=True)
    streamed = collate_items([item for _, item in zip(range(2), stream)])
    assert streamed.w.own_captions == batch.w.own_captions and streamed.l.own_captions == batch.l.own_captions


def test_caption_split_has_no_prompt_in_both_sides(tmp_path):
    rows = [row(i, f"prompt {i // 3}", png(i % 250), png(255 - i % 250), float(i % 2)) for i in range(90)]
    path = write_rows(tmp_path / "many.parquet", rows)
    sides = {}
    for subset in ("train", "validation"):
        pairs = PreferencePairs(str(path), resolution=8, pair_filter=PairFilter(validation_fraction=0.3, subset=subset))
        sides[subset] = set(pairs.table["caption"])
        assert pairs.report.dropped["other_subset"] == 90 - len(pairs)
    assert sides["train"] and sides["validation"] and not sides["train"] & sides["validation"]
    assert len(sides["train"] | sides["validation"]) == 30
    assert all(caption_subset(c, 0.3) == "validation" for c in sides["validation"])
    with pytest.raises(ValueError, match="validation_fraction > 0"):
        PairFilter(subset="validation")


def test_streaming_equals_map_style_without_shuffling(shard):
    options = dict(require_different=True, dedupe=False)
    table = PreferencePairs(str(shard), resolution=8, pair_filter=PairFilter(**options))
    stream = StreamingPairs(str(shard), resolution=8, filter_options=options)
    list(stream.rows(0))
    assert stream.report == table.report
    good = [i for i, r in enumerate(table.source_rows) if r != 5]
    streamed = [item for _, item in zip(range(len(good)), stream)]
    assert [it["fields"].caption for it in streamed] == [table[i]["fields"].caption for i in good]
    for i, item in zip(good, streamed):
        assert torch.equal(item["w"]["pixels"], table[i]["w"]["pixels"])
    assert stream.skip_report.rows == {5}  # stream position 5 = source row 5 without shuffling


def test_streaming_order_is_seeded_and_resumes_by_skipping(shard):
    def captions(start=0, n=7):  # one epoch: datasets 5.2 takes ~5 s to start each shuffled pass
        s = StreamingPairs(str(shard), resolution=8, seed=0, shuffle_buffer=4, start=start)
        return [it["fields"].caption for _, it in zip(range(n), s)]

    first = captions()
    assert sorted(first) != first and first == captions()
    assert captions(start=3, n=4) == first[3:]
    capped = StreamingPairs(str(shard), resolution=8, max_pairs=3)
    assert [it["fields"].caption for _, it in zip(range(6), capped)] == ["a red circle", "a blue square", "same looking"] * 2


def test_local_jsonl_and_csv_pairs(tmp_path):
    folder = tmp_path / "mine"
    (folder / "img").mkdir(parents=True)
    for name, value in (("w1", 10), ("l1", 200), ("w2", 30)):
        (folder / "img" / f"{name}.png").write_bytes(png(value))
    lines = [{"prompt": "one", "chosen": "img/w1.png", "rejected": "img/l1.png", "caption_chosen": "cw",
              "caption_rejected": "cl", "score_chosen": 2.0, "score_rejected": 1.0},
             {"prompt": "two", "chosen": "img/w2.png", "rejected": "img/gone.png"}]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    table = load_pair_table(str(folder))
    assert table["label_0"] == [1.0, 1.0] and table["score_0"] == [2.0, None] and table["caption_0"] == ["cw", None]
    report = tmp_path / "skipped.jsonl"
    pairs = PreferencePairs(str(folder), resolution=8, skip_report=report)
    item = pairs[1]  # the missing image: reported, replaced by the next (wrapped) pair
    assert item["fields"].own_captions == ("cw", "cl") and item["fields"].caption == "one"
    assert item["w"]["pixels"].mean() < item["l"]["pixels"].mean()  # winner (dark) first
    skipped = read_skipped(report)
    assert skipped[0]["row"] == 1 and "gone.png" in skipped[0]["error"]

    csv_file = folder / "other.csv"
    csv_file.write_text("prompt,chosen,rejected\nthree,img/l1.png,img/w1.png\n")
    csv_pairs = PreferencePairs(str(csv_file), resolution=8)
    assert len(csv_pairs) == 1 and csv_pairs[0]["w"]["pixels"].mean() > 0
    (folder / "bad.csv").write_text("prompt,winner\nx,y\n")
    with pytest.raises(ValueError, match=r"bad.csv: missing column\(s\) \['chosen', 'rejected'\]"):
        load_pair_table(str(folder / "bad.csv"))


@pytest.mark.slow  # ~140 s on 2 shared CPU cores (two demo-model runs)
def test_streaming_train_completes_and_resumes_exactly(shard, tmp_path, capsys):
    from safetensors.torch import load_file

    from diffalign.config.core import load_config
    from diffalign.config.schema import RunConfig
    from diffalign.training.loop import train

    def run(out, *extra):
        return train(load_config(RunConfig, None, [
            f"data.path={shard}", "data.streaming=true", f"train.output_dir={out}", "train.max_steps=4",
            "train.batch_size=2", "train.checkpoint_every=2", "train.trackers=[]", "train.warmup_steps=0",
            "validation.every=0", "train.log_every=1", *extra]))

    whole = run(tmp_path / "whole")
    out = capsys.readouterr().out
    assert "streamed" in out and "1 pair(s) skipped" in out
    assert read_skipped(tmp_path / "whole" / "skipped_rows.jsonl")[0]["ranking_id"] == 1005
    resumed = run(tmp_path / "resumed", f"train.resume={tmp_path / 'whole' / 'checkpoints' / 'step-00000002'}")
    a, b = (load_file(str(r.output_dir / "pytorch_lora_weights.safetensors")) for r in (whole, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="data.cache=require cannot apply to data.streaming"):
        run(tmp_path / "cached", "data.cache=require")

"""Data that is empty, not what its name says, or silently odd: never a traceback, never a silent surprise.

Empty parquet shards are not written and are skipped when read (pyarrow 26 cannot read one through
`datasets`); zero rows, a file that is not parquet / JSON lines, and filters that leave nothing are
one-line errors naming the file or the data.* key; empty and missing captions are counted."""

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from diffalign.data.filters import PairFilter, caption_subset
from diffalign.data.pairs import PreferencePairs, load_pair_table
from diffalign.data.resume import open_progress, write_shard
from diffalign.data.streaming import StreamingPairs, open_stream


def _rows(n: int, pair_file) -> dict:
    return pq.read_table(pair_file).slice(0, n).to_pydict()


def test_a_shard_without_rows_is_recorded_but_not_written_and_the_folder_loads(tmp_path, pair_file):
    out = tmp_path / "out"
    state = open_progress(out, {"source": "test"})
    for n in (3, 0, 2):
        write_shard(out, state, datasets.Dataset.from_dict(_rows(n, pair_file)), rows=n)
    assert sorted(p.name for p in (out / "data").iterdir()) == ["train-00000.parquet", "train-00002.parquet"]
    progress = json.loads((out / "progress.json").read_text())
    assert [s["file"] for s in progress["shards"]] == ["data/train-00000.parquet", None, "data/train-00002.parquet"]
    assert len(datasets.load_dataset(str(out), split="train")) == 5
    assert len(load_pair_table(str(out))) == 5
    assert open_progress(out, {"source": "test"})["shards"] == progress["shards"]  # resumes with the empty one


def test_an_empty_shard_from_an_older_version_is_skipped_when_read(tmp_path, pair_file):
    folder = tmp_path / "shards"
    folder.mkdir()
    table = pq.read_table(pair_file)
    pq.write_table(table, folder / "train-00000.parquet")
    pq.write_table(table.slice(0, 0), folder / "train-00001.parquet")
    assert len(load_pair_table(str(folder))) == len(table)
    assert sum(1 for _ in open_stream(str(folder))) == len(table)
    assert len(PreferencePairs(str(folder), resolution=16)) == 12  # the 2 ties dropped


def test_zero_rows_is_an_error_naming_the_file(tmp_path, pair_file):
    empty = tmp_path / "empty.parquet"
    pq.write_table(pq.read_table(pair_file).slice(0, 0), empty)
    with pytest.raises(ValueError, match=rf"^{empty}: no rows to read \(the parquet file is empty\)$"):
        PreferencePairs(str(empty), resolution=16)
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(2):
        pq.write_table(pq.read_table(pair_file).slice(0, 0), folder / f"part-{i}.parquet")
    with pytest.raises(ValueError, match=r"folder: no rows to read \(none of its 2 parquet files has a row: "):
        StreamingPairs(str(folder), resolution=16)
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n\n")
    with pytest.raises(ValueError, match=rf"^{jsonl}: no pairs \(the file holds no rows\)$"):
        PreferencePairs(str(jsonl), resolution=16)


def test_filters_that_leave_no_row_say_which_key_dropped_them(tmp_path, pair_file):
    ties = tmp_path / "ties.parquet"
    table = pq.read_table(pair_file)
    pq.write_table(table.filter(pa.compute.equal(table["label_0"], 0.5)), ties)
    with pytest.raises(ValueError, match=r"ties.parquet: no pairs to train on: all 2 rows were dropped: "
                                         r"2 ties \(label_0 = 0.5, always dropped\)$"):
        PreferencePairs(str(ties), resolution=16)
    captions = pq.read_table(pair_file)["caption"].to_pylist()
    one = tmp_path / "one.parquet"
    pq.write_table(table.filter(pa.compute.equal(table["caption"], captions[0])).slice(0, 1), one)
    other = "train" if caption_subset(captions[0], 0.5) == "validation" else "validation"
    with pytest.raises(ValueError, match=rf"one.parquet: no pairs to train on: all 1 rows were dropped: 1 by "
                                         rf"data.validation_fraction=0.5 \(their captions are not in data.subset={other}\)"):
        PreferencePairs(str(one), resolution=16, pair_filter=PairFilter(validation_fraction=0.5, subset=other))
    with pytest.raises(ValueError, match=r"no pairs to train on: all 2 rows were dropped: 2 ties"):
        next(iter(StreamingPairs(str(ties), resolution=16)))


def test_a_file_that_is_not_parquet_or_json_lines_is_named(tmp_path):
    fake = tmp_path / "pairs.parquet"
    fake.write_text("caption,jpg_0\n")
    with pytest.raises(ValueError, match=rf"^{fake}: not a readable parquet file \(Parquet magic bytes not found"):
        load_pair_table(str(fake))
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ValueError, match=rf"^{binary}: not a JSON lines text file \(byte 0 is not UTF-8\)$"):
        load_pair_table(str(binary))
    listed = tmp_path / "list.jsonl"
    listed.write_text('{"prompt": "a", "chosen": "a.png", "rejected": "b.png"}\n["a", "a.png", "b.png"]\n')
    with pytest.raises(ValueError, match=rf"^{listed} line 2: expected a JSON object with prompt, chosen and "
                                         r"rejected, got list$"):
        load_pair_table(str(listed))
    csv = tmp_path / "pairs.csv"
    csv.write_bytes(b"prompt,chosen,rejected\n\xff\xfe,a.png,b.png\n")
    with pytest.raises(ValueError, match=rf"^{csv}: not a CSV text file"):
        load_pair_table(str(csv))


def _odd_captions(tmp_path, pair_file):
    table = pq.read_table(pair_file).to_pydict()
    table["caption"][:4] = ["", None, "   ", None]  # rows 0-3 are decided pairs
    path = tmp_path / "odd.parquet"
    pq.write_table(pa.table(table), path)
    return path


def test_empty_and_missing_captions_are_counted(tmp_path, pair_file):
    path = _odd_captions(tmp_path, pair_file)
    note = "2 with an empty caption, 2 with no caption (trained unconditionally, as data.empty_prompt_prob does on purpose)"
    pairs = PreferencePairs(str(path), resolution=16)
    assert pairs.report.describe() == f"14 rows read, 12 kept, 2 dropped (2 tie); {note}"
    assert PreferencePairs(str(path), resolution=16, max_pairs=3).report.captions_note().startswith(
        "2 with an empty caption, 1 with no caption")
    stream = StreamingPairs(str(path), resolution=16)
    next(iter(stream))
    assert stream.report.missing_captions + stream.report.empty_captions >= 1
    plain = PreferencePairs(str(pair_file), resolution=16)
    assert plain.report.captions_note() == "" and "caption" not in plain.report.describe()


def test_a_run_says_at_its_start_how_many_captions_are_empty_or_missing(tmp_path, pair_file, capsys):
    from diffalign.cli.main import main

    path = _odd_captions(tmp_path, pair_file)
    assert main(["train", f"data.path={path}", f"train.output_dir={tmp_path / 'run'}", "train.max_steps=1",
                 "train.batch_size=2", "train.trackers=[]", "data.resolution=16", "validation.every=0"]) == 0
    out = capsys.readouterr().out
    assert (f"data {path}: 12 decided pairs (14 rows read, 12 kept, 2 dropped (2 tie); 2 with an empty caption, 2 with "
            "no caption (trained unconditionally, as data.empty_prompt_prob does on purpose))") in out


@pytest.mark.parametrize("name, content, message", [
    ("metadata.jsonl", b'{"file_name": "\xff"}\n', r"metadata.jsonl: not a UTF-8 text file \(byte 15 is not UTF-8\)$"),
    ("metadata.csv", b"file_name,caption\n\xfe.png,x\n", r"metadata.csv: not a UTF-8 text file"),
])
def test_a_metadata_file_that_is_not_what_its_suffix_says_is_named(tmp_path, name, content, message):
    """A metadata file given as data.path is read as one (a metadata.jsonl was taken for a pairs file)."""
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=rf"^{tmp_path / name}: " + message.split(": ", 1)[1]):
        PreferencePairs(str(tmp_path / name), resolution=16, winners_only=True)


def test_a_metadata_file_given_as_the_data_path_is_read_as_one(winners_folder):
    table = load_pair_table(str(winners_folder / "metadata.jsonl"), winners_only=True)
    assert len(table) == len(load_pair_table(str(winners_folder), winners_only=True)) == 12

"""Prompt sets: every file format, the named sets from local copies, offline errors, category filters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from diffalign.evaluation import prompt_sets
from diffalign.evaluation.prompt_sets import (
    HPDV2_STYLES,
    PARTI_URL,
    Prompt,
    PromptFileError,
    PromptSetNotFound,
    available_prompt_sets,
    diffalign_cache_dir,
    load_prompt_set,
    load_prompts,
    read_prompt_file,
)
from diffalign.evaluation.prompts import load_prompts as old_load_prompts
from diffalign.synthetic.domain import SHAPES

PARTI_COPY = Path(__file__).resolve().parents[2] / "assets" / "prompts" / "PartiPrompts.tsv"
REAL_DOWNLOAD_TO = prompt_sets.download_to  # before the autouse fixture replaces it
needs_parti = pytest.mark.skipif(not PARTI_COPY.is_file(), reason="no local copy of PartiPrompts.tsv")


def _no_network(url, target):
    raise ConnectionError(f"tests never download ({url})")


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No network, an empty cache in tmp_path, no prompt folder or Pick-a-Pic override from the caller."""
    for name in ("DIFFALIGN_CACHE", "DIFFALIGN_PROMPTS_DIR", "DIFFALIGN_PICKAPIC_PROMPTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(prompt_sets, "download_to", _no_network)
    monkeypatch.setattr(prompt_sets, "BUNDLED_PARTI", str(tmp_path / "no-bundled-copy.tsv"))


# ---------------------------------------------------------------- files


def test_text_file_skips_blank_and_comment_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# header\na cat\n\n  a dog  \n#x\n")
    s = load_prompt_set(str(path))
    assert s.texts == ["a cat", "a dog"] and not s.has_categories
    assert s.name == str(path) and s.source == str(path)
    assert load_prompts(path) == old_load_prompts(path) == ["a cat", "a dog"]


@pytest.mark.parametrize("suffix,delimiter", [(".csv", ","), (".tsv", "\t")])
def test_tables_with_and_without_categories(tmp_path, suffix, delimiter):
    with_cat = tmp_path / f"a{suffix}"
    with_cat.write_text(delimiter.join(["Prompt", "Category", "Note"]) + "\n"
                        + delimiter.join(["a cat", "Animals", ""]) + "\n"
                        + delimiter.join(['"a sign that says ""hi"", twice"', "", "x"]) + "\n")
    assert read_prompt_file(with_cat) == [Prompt("a cat", "Animals"), Prompt('a sign that says "hi", twice', None)]
    plain = tmp_path / f"b{suffix}"
    plain.write_text(delimiter.join(["id", "caption"]) + "\n" + delimiter.join(["1", "a dog"]) + "\n")
    s = load_prompt_set(str(plain))
    assert s.prompts == [Prompt("a dog")] and s.categories == [None]


def test_jsonl_and_json_with_and_without_categories(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a cat", "category": "Animals"}\n\n{"text": "a dog"}\n')
    assert read_prompt_file(jsonl) == [Prompt("a cat", "Animals"), Prompt("a dog")]
    strings = tmp_path / "s.json"
    strings.write_text(json.dumps(["a cat", "a dog"]))
    assert load_prompt_set(str(strings)).texts == ["a cat", "a dog"]
    objects = tmp_path / "o.json"
    objects.write_text(json.dumps([{"caption": "a cat", "style": "anime"}, {"caption": "a dog", "style": "photo"}]))
    s = load_prompt_set(str(objects))
    assert s.categories == ["anime", "photo"] and s.category_names == ["anime", "photo"]


def test_parquet_with_and_without_categories(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"caption": ["a cat", "a dog"], "category": ["Animals", None], "x": [1, 2]}), path)
    assert read_prompt_file(path) == [Prompt("a cat", "Animals"), Prompt("a dog")]
    plain = tmp_path / "q.parquet"
    pq.write_table(pa.table({"prompt": ["a cat"]}), plain)
    assert load_prompt_set(str(plain)).prompts == [Prompt("a cat")]


def test_missing_file_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt.*neither a file nor a named set.*parti"):
        load_prompt_set(str(tmp_path / "nope.txt"))
    with pytest.raises(PromptSetNotFound, match="nope.csv not found"):
        read_prompt_file(tmp_path / "nope.csv")
    with pytest.raises(PromptSetNotFound, match="is a folder, not a prompt file"):
        read_prompt_file(tmp_path)


@pytest.mark.parametrize("name,content", [
    ("p.csv", "id,url\n1,x\n"),
    ("p.jsonl", '{"id": 1, "url": "x"}\n'),
    ("p.json", '[{"id": 1, "url": "x"}]'),
])
def test_no_prompt_column_names_the_columns_found(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(PromptFileError, match=rf"{name}.*no prompt column.*prompt, caption.*found id, url"):
        read_prompt_file(tmp_path / name)


def test_parquet_without_prompt_column(tmp_path):
    pq.write_table(pa.table({"jpg_0": [b"x"], "label_0": [1.0]}), tmp_path / "p.parquet")
    with pytest.raises(PromptFileError, match="p.parquet: no prompt column.*found jpg_0, label_0"):
        read_prompt_file(tmp_path / "p.parquet")


def test_bad_rows_are_located(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n\n{"prompt": "b",\n')
    with pytest.raises(PromptFileError, match=r"p.jsonl line 3: not valid JSON"):
        read_prompt_file(tmp_path / "p.jsonl")
    (tmp_path / "p.json").write_text('["a", 3]')
    with pytest.raises(PromptFileError, match=r"p.json item \[1\]: expected a prompt string"):
        read_prompt_file(tmp_path / "p.json")
    (tmp_path / "d.json").write_text('{"prompt": "a"}')
    with pytest.raises(PromptFileError, match="d.json: expected a JSON list"):
        read_prompt_file(tmp_path / "d.json")
    (tmp_path / "p.csv").write_text("prompt\na\n\"\"\n")
    with pytest.raises(PromptFileError, match="p.csv line 3: the prompt is empty"):
        read_prompt_file(tmp_path / "p.csv")


def test_file_category_filter_and_limit(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("prompt\tcategory\na\tX\nb\tY\nc\tX\nd\tX\n")
    s = load_prompt_set(f"{path}:X", limit=2)
    assert s.texts == ["a", "c"] and s.name == f"{path}:X" and s.source == str(path)
    assert load_prompt_set(f"{path}:y").texts == ["b"]  # case-insensitive when unambiguous
    with pytest.raises(ValueError, match="no category 'Z'; its categories are X, Y"):
        load_prompt_set(f"{path}:Z")
    assert load_prompt_set(str(path), limit=3).texts == ["a", "b", "c"]
    assert len(load_prompt_set(str(path), limit=100)) == 4
    with pytest.raises(ValueError, match="positive"):
        load_prompt_set(str(path), limit=0)


# ---------------------------------------------------------------- named sets


def test_registry_describes_every_set():
    sets = available_prompt_sets()
    assert set(sets) == {"parti", "pickapic-test", "pickapic-validation", "hpdv2", "demo"}
    assert all(isinstance(d, str) and d and "\n" not in d for d in sets.values())


def test_demo_has_89_prompts_with_shape_categories():
    s = load_prompt_set("demo")
    assert len(s) == 89 and s.name == "demo"
    assert set(s.categories) == set(SHAPES)
    assert all(p.category in p.text for p in s.prompts)
    circles = load_prompt_set("demo:circle", limit=5)
    assert len(circles) == 5 and all(p.category == "circle" for p in circles.prompts)


@needs_parti
def test_parti_from_the_prompts_dir(tmp_path, monkeypatch):
    folder = tmp_path / "prompts"
    folder.mkdir()
    shutil.copy(PARTI_COPY, folder / "PartiPrompts.tsv")
    monkeypatch.setenv("DIFFALIGN_PROMPTS_DIR", str(folder))
    s = load_prompt_set("parti")
    assert len(s) == 1632 and len(set(s.texts)) == 1632
    assert len(s.category_names) == 12 and "Animals" in s.category_names
    assert s.source == str(folder / "PartiPrompts.tsv")
    animals = load_prompt_set("parti:Animals")
    assert len(animals) == 314 and set(animals.categories) == {"Animals"}
    assert load_prompt_set("parti:Animals", limit=10).texts == animals.texts[:10]
    with pytest.raises(ValueError, match="no category 'Robots'; its categories are Abstract, .*Animals"):
        load_prompt_set("parti:Robots")


@needs_parti
def test_parti_reads_the_bundled_copy_offline(monkeypatch):
    monkeypatch.setattr(prompt_sets, "BUNDLED_PARTI", "assets/prompts/PartiPrompts.tsv")
    s = load_prompt_set("parti")
    assert len(s) == 1632 and s.source.endswith("assets/prompts/PartiPrompts.tsv")


def test_parti_downloads_once_into_the_cache(tmp_path, monkeypatch):
    published = tmp_path / "published.tsv"
    published.write_text("Prompt\tCategory\tChallenge\tNote\nbond\tAbstract\tBasic\t\na snail\tAnimals\tBasic\t\n")
    calls = []

    def fake_download(url, target):
        calls.append(url)
        target.parent.mkdir(parents=True)
        shutil.copy(published, target)

    monkeypatch.setattr(prompt_sets, "download_to", fake_download)
    first = load_prompt_set("parti")
    assert calls == [PARTI_URL] and first.prompts == [Prompt("bond", "Abstract"), Prompt("a snail", "Animals")]
    assert Path(first.source) == tmp_path / "xdg-cache" / "diffalign" / "prompts" / "PartiPrompts.tsv"
    assert load_prompt_set("parti:Animals").texts == ["a snail"] and calls == [PARTI_URL]


def test_parti_offline_says_what_to_download_and_where(tmp_path, monkeypatch):
    folder = tmp_path / "empty"
    folder.mkdir()
    monkeypatch.setenv("DIFFALIGN_PROMPTS_DIR", str(folder))
    with pytest.raises(FileNotFoundError) as caught:
        load_prompt_set("parti")
    message = str(caught.value)
    assert PARTI_URL in message and str(folder / "PartiPrompts.tsv") in message
    assert "--prompts path/to/PartiPrompts.tsv" in message and "ConnectionError" in message


def test_real_downloader_refuses_when_offline(tmp_path):
    with pytest.raises(ConnectionError, match="HF_HUB_OFFLINE"):
        REAL_DOWNLOAD_TO(PARTI_URL, tmp_path / "x.tsv")
    assert not (tmp_path / "x.tsv").exists()


def _write_pickapic(folder: Path) -> Path:
    data = folder / "data"
    data.mkdir(parents=True)
    pq.write_table(pa.table({"caption": ["a cat", "a dog", "a cat", "a fox"], "jpg_0": [b"x"] * 4}),
                   data / "test_unique-00000-of-00001.parquet")
    pq.write_table(pa.table({"caption": ["a red fox", "a red fox", "an owl"], "jpg_0": [b"x"] * 3}),
                   data / "validation_unique-00000-of-00001.parquet")
    (data / "train-00000-of-00001.parquet").write_bytes(b"not parquet: the train split must never be read")
    return folder


def test_pickapic_from_a_local_dataset_folder(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    folder = _write_pickapic(tmp_path / "pickapic")
    monkeypatch.setenv("DIFFALIGN_PICKAPIC_PROMPTS", str(folder))
    test = load_prompt_set("pickapic-test")
    assert test.texts == ["a cat", "a dog", "a fox"] and not test.has_categories
    assert test.source == f"{folder} split test_unique"
    validation = load_prompt_set("pickapic-validation", limit=1)
    assert validation.texts == ["a red fox"]


def test_pickapic_offline_names_the_dataset_split_and_alternative(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.setenv("DIFFALIGN_PICKAPIC_PROMPTS", str(tmp_path / "not-there"))
    with pytest.raises(FileNotFoundError) as caught:
        load_prompt_set("pickapic-validation")
    message = str(caught.value)
    assert "validation_unique" in message and str(tmp_path / "not-there") in message
    assert "DIFFALIGN_PICKAPIC_PROMPTS" in message and "--prompts captions.parquet" in message


def _write_hpdv2(folder: Path) -> None:
    folder.mkdir(parents=True)
    for style in HPDV2_STYLES:
        (folder / f"{style}.json").write_text(json.dumps([f"{style} {i}" for i in range(3)]))


def test_hpdv2_from_local_json_files(tmp_path, monkeypatch):
    _write_hpdv2(tmp_path / "prompts" / "hpdv2")
    monkeypatch.setenv("DIFFALIGN_PROMPTS_DIR", str(tmp_path / "prompts"))
    s = load_prompt_set("hpdv2")
    assert len(s) == 12 and s.category_names == list(HPDV2_STYLES)
    assert s.prompts[0] == Prompt("anime 0", "anime")
    anime = load_prompt_set("hpdv2:anime", limit=2)
    assert anime.texts == ["anime 0", "anime 1"] and anime.source == str(tmp_path / "prompts" / "hpdv2" / "anime.json")
    with pytest.raises(ValueError, match="no style 'cartoon'; its styles are anime, concept-art, paintings, photo"):
        load_prompt_set("hpdv2:cartoon")


def test_hpdv2_from_the_cache_dir_in_the_hub_layout():
    _write_hpdv2(diffalign_cache_dir() / "prompts" / "hpdv2" / "benchmark")  # as `hf download --local-dir` leaves it
    assert load_prompt_set("hpdv2:photo").texts == ["photo 0", "photo 1", "photo 2"]


def test_hpdv2_offline_says_which_files_and_where(tmp_path, monkeypatch):
    import huggingface_hub

    def offline_download(**kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline_download)
    monkeypatch.setenv("DIFFALIGN_PROMPTS_DIR", str(tmp_path / "prompts"))
    with pytest.raises(FileNotFoundError) as caught:
        load_prompt_set("hpdv2:paintings")
    message = str(caught.value)
    assert "zhwang/HPDv2" in message and "benchmark/paintings.json" in message
    assert str(tmp_path / "prompts" / "hpdv2") in message


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    assert diffalign_cache_dir() == tmp_path / "xdg-cache" / "diffalign"
    monkeypatch.setenv("DIFFALIGN_CACHE", str(tmp_path / "mine"))
    assert diffalign_cache_dir() == tmp_path / "mine"

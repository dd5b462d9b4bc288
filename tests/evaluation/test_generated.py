import json

import numpy as np
import pytest
from PIL import Image

from diffalign.evaluation.generated import read_generated


def write_folder(folder, records, settings=None, missing=()):
    """A generation folder: a 4-px PNG per record (except the file names in `missing`) and metadata.jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for record in records:
        record = {"file_name": f"p{record['prompt_index']:05d}-s{record['seed']}.png", "category": None, **record}
        if record["file_name"] not in missing:
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / record["file_name"])
        lines.append(json.dumps(record))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    if settings is not None:
        (folder / "generation.json").write_text(json.dumps(settings))
    return folder


def test_reads_images_sorted_with_settings_and_lookups(tmp_path):
    folder = write_folder(tmp_path / "gen", [
        {"prompt": "a dog", "prompt_index": 1, "seed": 1, "category": "Animals"},
        {"prompt": "a cat", "prompt_index": 0, "seed": 1},
        {"prompt": "a dog", "prompt_index": 1, "seed": 0, "category": "Animals", "steps": 20},
        {"prompt": "a cat", "prompt_index": 0, "seed": 0},
    ], settings={"model": "assets/tiny-sd", "seeds": [0, 1]})
    gen = read_generated(folder)
    assert [(i.prompt_index, i.seed) for i in gen.images] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert gen.settings == {"model": "assets/tiny-sd", "seeds": [0, 1]} and gen.missing == 0
    dog = gen.get(1, 0)
    assert dog.file == folder / "p00001-s0.png" and dog.category == "Animals" and dog.meta["steps"] == 20
    assert gen.get(2, 0) is None
    assert gen.by_prompt_seed("a cat", 1) is gen.get(0, 1) and gen.by_prompt_seed("a cow", 0) is None
    assert gen.prompts() == [(0, "a cat"), (1, "a dog")]
    assert gen.seeds() == [0, 1]


def test_missing_files_are_dropped_and_counted_later_duplicates_win(tmp_path):
    folder = write_folder(tmp_path / "gen", [
        {"prompt": "a cat", "prompt_index": 0, "seed": 0, "steps": 10},
        {"prompt": "a cat", "prompt_index": 0, "seed": 1},
        {"prompt": "a cat", "prompt_index": 0, "seed": 0, "steps": 30},
    ], missing={"p00000-s1.png"})
    (folder / "metadata.jsonl").write_text((folder / "metadata.jsonl").read_text() + "\n   \n")  # blank lines pass
    gen = read_generated(folder)
    assert [(i.prompt_index, i.seed) for i in gen.images] == [(0, 0)]
    assert gen.images[0].meta["steps"] == 30 and gen.missing == 1 and gen.settings == {}


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"file_name": "a.png", "prompt": "x", "seed": 0}', "missing key 'prompt_index'"),
    ('{"file_name": "a.png", "prompt": "x", "prompt_index": "3", "seed": 0}', "'prompt_index' must be int"),
    ('{"file_name": "a.png", "prompt": "x", "prompt_index": 3, "seed": true}', "'seed' must be int"),
    ('{"file_name": "a.png", "prompt": "x", "prompt_index": 3, "seed": 0, "category": 5}', "'category'"),
])
def test_a_malformed_line_names_the_file_and_line(tmp_path, line, message):
    folder = write_folder(tmp_path / "gen", [{"prompt": "a cat", "prompt_index": 0, "seed": 0}])
    with (folder / "metadata.jsonl").open("a") as out:
        out.write(line + "\n")
    with pytest.raises(ValueError, match=rf"metadata.jsonl line 2: .*{message}"):
        read_generated(folder)


def test_one_prompt_index_with_two_texts_is_an_error(tmp_path):
    folder = write_folder(tmp_path / "gen", [
        {"prompt": "a cat", "prompt_index": 0, "seed": 0},
        {"prompt": "a dog", "prompt_index": 0, "seed": 1},
    ])
    with pytest.raises(ValueError, match="prompt_index 0 has the prompt 'a cat' on line 1 but 'a dog' on line 2"):
        read_generated(folder)


def test_a_folder_without_metadata_is_not_a_generation_output(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no metadata.jsonl, so it is not a `diffalign generate` output"):
        read_generated(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        read_generated(tmp_path / "absent")


def test_a_broken_settings_file_is_named(tmp_path):
    folder = write_folder(tmp_path / "gen", [{"prompt": "a cat", "prompt_index": 0, "seed": 0}])
    (folder / "generation.json").write_text("{oops")
    with pytest.raises(ValueError, match="generation.json: not valid JSON"):
        read_generated(folder)

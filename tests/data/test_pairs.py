import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from diffalign.data.pairs import PreferencePairs, load_pair_table, write_pair_table
from diffalign.data.record import collate_items
from diffalign.data.transforms import prepare_image


def solid(colour, size=(32, 32)):
    return np.full((*size[::-1], 3), colour, np.uint8)


def test_winner_first_and_ties_dropped(tmp_path):
    path = write_pair_table(
        tmp_path / "p.parquet",
        {
            "caption": ["a", "b", "c"],
            "jpg_0": [solid(0), solid(0), solid(0)],
            "jpg_1": [solid(255), solid(255), solid(255)],
            "label_0": [1.0, 0.0, 0.5],
            "label_1": [0.0, 1.0, 0.5],
        },
    )
    pairs = PreferencePairs(str(path), resolution=32)
    assert len(pairs) == 2 and pairs.dropped == 1
    batch = collate_items([pairs[0], pairs[1]])
    assert batch.captions == ["a", "b"]
    assert batch.w.pixels[0].mean().item() == -1.0 and batch.l.pixels[0].mean().item() == 1.0  # label_0 = 1
    assert batch.w.pixels[1].mean().item() == 1.0 and batch.l.pixels[1].mean().item() == -1.0  # label_0 = 0
    assert batch.w.original_sizes.tolist() == [[32, 32], [32, 32]]


def test_missing_column_names_found_and_expected(tmp_path):
    pq.write_table(pa.table({"caption": ["x"], "jpg_0": [b""], "label_0": [1.0]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['jpg_1'\].*found \['caption', 'jpg_0', 'label_0'\]"):
        load_pair_table(str(tmp_path / "bad.parquet"))


def test_corrupt_image_error_names_row_and_column(tmp_path):
    good = io.BytesIO()
    Image.fromarray(solid(9)).save(good, format="PNG")
    path = write_pair_table(
        tmp_path / "c.parquet",
        {"caption": ["x"], "jpg_0": [good.getvalue()], "jpg_1": [b"not an image"], "label_0": [1.0], "label_1": [0.0]},
    )
    with pytest.raises(ValueError, match=r"c.parquet row 0 jpg_1: cannot decode"):
        PreferencePairs(str(path), resolution=32)[0]


def test_folder_of_shards_and_missing_path(tmp_path, pair_file):
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "part-0.parquet").write_bytes(pair_file.read_bytes())
    (folder / "part-1.parquet").write_bytes(pair_file.read_bytes())
    assert len(load_pair_table(str(folder))) == 28
    with pytest.raises(FileNotFoundError, match="not found"):
        load_pair_table("./nowhere/pairs.parquet")


def test_prepare_image_resize_crop_flip():
    image = Image.fromarray(np.concatenate([solid(0, (40, 32)), solid(255, (40, 32))], axis=1))  # 32 x 80
    prepared = prepare_image(image, 16)
    assert prepared.pixels.shape == (3, 16, 16)
    assert prepared.original_size == (32, 80) and prepared.crop_top_left == (0, 12)
    g = torch.Generator().manual_seed(0)
    crops = {prepare_image(image, 16, random_crop=True, generator=g).crop_top_left for _ in range(20)}
    assert len(crops) > 1 and all(top == 0 and 0 <= left <= 24 for top, left in crops)
    left_dark = Image.fromarray(np.concatenate([solid(0, (16, 16)), solid(255, (16, 16))], axis=1))
    flips = {prepare_image(left_dark, 32, random_flip=True, generator=g).pixels[0, 0, 0].item() for _ in range(20)}
    assert flips == {-1.0, 1.0}


def test_weight_column_reaches_the_batch_and_is_absent_without_it(tmp_path):
    rows = {"caption": ["a", "b"], "jpg_0": [solid(0), solid(9)], "jpg_1": [solid(255), solid(99)],
            "label_0": [1.0, 0.0], "label_1": [0.0, 1.0]}
    plain = PreferencePairs(str(write_pair_table(tmp_path / "plain.parquet", rows)), resolution=32)
    assert collate_items([plain[0], plain[1]]).weight is None
    weighted = PreferencePairs(str(write_pair_table(tmp_path / "w.parquet", {**rows, "weight": [0.25, 2.0]})), resolution=32)
    assert collate_items([weighted[0], weighted[1]]).weight.tolist() == [0.25, 2.0]

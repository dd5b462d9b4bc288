"""Tiny random-weight replicas of the scorers' checkpoints, saved in their published layouts."""

from __future__ import annotations

import random

import pytest
from PIL import Image

from diffalign.rewards.replicas import save_aesthetic_head, save_clip_replica, save_hps_replica, save_open_clip_config


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A tiny CLIP saved like `yuvalkirstain/PickScore_v1` (model + tokenizer + processor in one folder)."""
    return save_clip_replica(tmp_path_factory.mktemp("tiny-clip") / "clip", "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_hps(tmp_path_factory):
    """(checkpoint .pt, architecture name, its config JSON) of a tiny open_clip saved like HPS_v2.1_compressed.pt."""
    root = tmp_path_factory.mktemp("tiny-hps")
    config = save_open_clip_config(root / "tiny-hps-clip.json")
    checkpoint = save_hps_replica(root / "HPS_v2.1_compressed.pt", "tiny-hps-clip", config, seed=1)
    return checkpoint, "tiny-hps-clip", config


@pytest.fixture(scope="session")
def tiny_aesthetic_head(tmp_path_factory):
    """A random aesthetic head for the tiny CLIP's 32-d embeddings, saved like the published .pth."""
    return save_aesthetic_head(tmp_path_factory.mktemp("tiny-aesthetic") / "head.pth", width=32, seed=2)


@pytest.fixture()
def photos():
    """Six small RGB images of mixed sizes and contents, with a prompt each."""
    rng = random.Random(0)
    sizes = [(64, 64), (96, 48), (40, 80), (64, 64), (300, 200), (224, 100)]
    images = []
    for w, h in sizes:
        image = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
        for _ in range(20):
            x, y = rng.randrange(w), rng.randrange(h)
            image.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, min(w, x + 9), min(h, y + 7)))
        images.append(image)
    prompts = ["a red cat", "a blue dog on grass", "an astronaut", "a red cat", "city at night, neon", "a bowl of fruit"]
    return images, prompts

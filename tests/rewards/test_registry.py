"""The scorer registry: every scorer by name, imported on first use; shared options."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from diffalign.rewards import available_scorers, build_scorer, resolve_device, resolve_dtype, to_pil_images
from diffalign.rewards.attention import attention_implementation


def test_every_scorer_is_registered():
    assert set(available_scorers()) >= {"shapes", "pickscore", "hpsv2", "hpsv2.1", "clip", "imagereward", "aesthetic"}
    with pytest.raises(KeyError, match="did you mean 'hpsv2.1'"):
        build_scorer("hpsv21")


def test_importing_the_registry_does_not_import_model_scorers():
    code = "import sys, diffalign.rewards as r; print('diffalign.rewards.pickscore' in sys.modules, 'open_clip' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_device_and_dtype_defaults():
    cpu = torch.device("cpu")
    assert resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype(None, torch.device("cuda")) == torch.float16
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_device("cpu") == cpu
    with pytest.raises(ValueError, match="unknown dtype 'half'"):
        resolve_dtype("half", cpu)


def test_to_pil_images_accepts_every_form():
    chw_float = torch.rand(2, 3, 8, 6)
    images = to_pil_images(chw_float)
    assert [image.size for image in images] == [(6, 8), (6, 8)]
    hwc_uint8 = (chw_float.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(to_pil_images(hwc_uint8), images))
    assert to_pil_images([hwc_uint8[0], images[1]])[0].mode == "RGB"


def test_xformers_backend_needs_xformers():
    pytest.importorskip("transformers")
    try:
        import xformers  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="use attention=sdpa"):
            attention_implementation("xformers")
    else:
        assert attention_implementation("xformers") == "xformers"
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        attention_implementation("flash")

"""HPS v2/v2.1 against open_clip and HPS's documented preprocessing, on a tiny open_clip saved like the HPS checkpoint."""

from __future__ import annotations

import argparse

import open_clip
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from diffalign.rewards import build_scorer
from diffalign.rewards.hps import OPENAI_MEAN, OPENAI_STD, hps_transform
from diffalign.rewards.weights import WeightsNotFound


def reference_hps(checkpoint, architecture, images, prompt):
    """hpsv2.score(): one image at a time, encode with normalize=True, diagonal of image @ text.T."""
    model = open_clip.create_model(architecture, pretrained=None)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"])
    model.eval()
    tokenizer = open_clip.get_tokenizer(architecture)
    scores = []
    with torch.no_grad():
        for image in images:
            # HPS "light" transform: ToTensor, ResizeMaxSize(224) (tensor bicubic, centred zero pad), normalise
            x = TF.to_tensor(image)
            h, w = x.shape[1:]
            s = 224 / max(h, w)
            size = (round(h * s), round(w * s))
            x = TF.resize(x, list(size), TF.InterpolationMode.BICUBIC)
            ph, pw = 224 - size[0], 224 - size[1]
            x = TF.pad(x, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=0)
            x = TF.normalize(x, OPENAI_MEAN, OPENAI_STD)[None]
            image_features = model.encode_image(x, normalize=True)
            text_features = model.encode_text(tokenizer([prompt]), normalize=True)
            scores.append(torch.diagonal(image_features @ text_features.T).item())
    return torch.tensor(scores)


def test_matches_reference_one_image_at_a_time(tiny_hps, photos):
    checkpoint, architecture, config = tiny_hps
    images, _ = photos
    images = [image for image in images if max(image.size) != 224]  # the reference cannot pad those
    scorer = build_scorer("hpsv2.1", checkpoint=str(checkpoint), architecture=architecture,
                          architecture_config=str(config), batch_size=3)
    prompt = "a cat with two horns on its head"
    expected = reference_hps(checkpoint, architecture, images, prompt)
    assert torch.allclose(scorer.score(images, [prompt] * len(images)), expected, atol=1e-5)
    assert scorer.name == "hpsv2.1" and scorer.scale == "cos"


def test_light_transform_letterboxes_instead_of_cropping():
    image = Image.new("RGB", (448, 224), (255, 0, 0))  # 2:1, becomes 224 x 112 with 56 black rows above and below
    x = hps_transform(image)
    black = (torch.zeros(3) - torch.tensor(OPENAI_MEAN)) / torch.tensor(OPENAI_STD)
    red = (torch.tensor([1.0, 0, 0]) - torch.tensor(OPENAI_MEAN)) / torch.tensor(OPENAI_STD)
    assert x.shape == (3, 224, 224)
    assert torch.allclose(x[:, :56].mean(dim=(1, 2)), black, atol=1e-5)
    assert torch.allclose(x[:, -56:].mean(dim=(1, 2)), black, atol=1e-5)
    assert torch.allclose(x[:, 60:164].mean(dim=(1, 2)), red, atol=1e-3)
    # RGBA is scored as RGB, and an image whose longest side is already 224 is padded to a square
    assert hps_transform(Image.new("RGBA", (224, 100))).shape == (3, 224, 224)


def test_versions_and_scales(tiny_hps, photos):
    checkpoint, architecture, config = tiny_hps
    images, prompts = photos
    common = dict(checkpoint=str(checkpoint), architecture=architecture, architecture_config=str(config))
    cos = build_scorer("hpsv2", **common)
    benchmark = build_scorer("hpsv2", scale="100*cos", **common)
    assert cos.name == "hpsv2" and cos.version == "v2.0"
    assert torch.allclose(benchmark.score(images, prompts), cos.score(images, prompts) * 100, atol=1e-3)
    assert benchmark.logit_scale * 100 == pytest.approx(cos.logit_scale)
    with pytest.raises(ValueError, match="scale must be one of"):
        build_scorer("hpsv2", scale="logit_scale*cos", **common)


def test_checkpoint_folder_and_safetensors(tiny_hps, photos, tmp_path):
    from safetensors.torch import save_file

    checkpoint, architecture, config = tiny_hps
    images, prompts = photos
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "hps.safetensors")
    from_pt = build_scorer("hpsv2.1", checkpoint=str(checkpoint.parent), architecture=architecture)
    from_st = build_scorer("hpsv2.1", checkpoint=str(tmp_path / "hps.safetensors"), architecture=architecture)
    assert torch.equal(from_pt.score(images, prompts), from_st.score(images, prompts))


def test_clear_errors(tiny_hps, tmp_path, monkeypatch):
    checkpoint, architecture, config = tiny_hps
    with pytest.raises(WeightsNotFound, match="must hold HPS_v2_compressed.pt"):
        build_scorer("hpsv2", checkpoint=str(checkpoint.parent), architecture=architecture)
    with pytest.raises(ValueError, match="does not fit open_clip ViT-B-32"):
        build_scorer("hpsv2.1", checkpoint=str(checkpoint), architecture="ViT-B-32")

    import huggingface_hub

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(WeightsNotFound, match="hf download xswu/HPSv2 HPS_v2.1_compressed.pt"):
        build_scorer("hpsv2.1", architecture=architecture)
    torch.save({"state_dict": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="never unpickles"):
        build_scorer("hpsv2.1", checkpoint=str(tmp_path / "bad.pt"), architecture=architecture)

import contextlib
import shutil
import time
from pathlib import Path

import pytest
import torch

from diffalign.config.schema import ModelConfig
from diffalign.models.conditioning import encode_prompts, sdxl_time_ids, unet_kwargs
from diffalign.models.loading import load_parts, resolve_source
from diffalign.models.prediction import training_target

DEMO = Path(__file__).resolve().parents[2] / "assets" / "tiny-sd"


@pytest.mark.parametrize(
    "family,expected",
    [("sd15", ("sd", "epsilon", 1)), ("sd21-v", ("sd", "v_prediction", 1)), ("sdxl", ("sdxl", "epsilon", 2))],
)
def test_load_parts_per_family(tiny_models, family, expected):
    parts = load_parts(ModelConfig(pretrained=str(tiny_models[family])))
    assert (parts.family, parts.prediction_type, len(parts.text_encoders)) == expected
    assert not any(p.requires_grad for p in parts.vae.parameters())
    cond = encode_prompts(parts, ["a red circle on a blue background", ""])
    if family == "sdxl":
        assert cond.hidden_states.shape == (2, 77, 64) and cond.pooled.shape == (2, 32)
        time_ids = sdxl_time_ids(torch.tensor([[32, 32], [40, 48]]), torch.tensor([[0, 0], [4, 8]]), (32, 32))
        assert time_ids.tolist() == [[32, 32, 0, 0, 32, 32], [40, 48, 4, 8, 32, 32]]
        kwargs = unet_kwargs(cond, time_ids)
    else:
        assert cond.hidden_states.shape == (2, 77, 32) and cond.pooled is None
        kwargs = unet_kwargs(cond)
    out = parts.unet(torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), **kwargs).sample
    assert out.shape == (2, 4, 8, 8)


def test_prediction_override_and_v_target(tiny_models):
    parts = load_parts(ModelConfig(pretrained=str(tiny_models["sd15"]), prediction_type="v_prediction"))
    assert parts.prediction_type == "v_prediction"
    s = parts.noise_scheduler
    x0, eps, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([0, 400, 999])
    a = s.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    b = (1 - s.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    assert torch.allclose(training_target(s, x0, eps, t, "v_prediction"), a * eps - b * x0, atol=1e-6)
    assert training_target(s, x0, eps, t, "epsilon") is eps


def test_missing_local_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_source("./no/such/model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a diffusers pipeline folder"):
        resolve_source(str(tmp_path / "empty"))
    assert resolve_source("runwayml/stable-diffusion-v1-5") == "runwayml/stable-diffusion-v1-5"


@pytest.fixture
def hub(monkeypatch):
    """hub(kind): point huggingface_hub at a local stand-in hub ('unreachable' or 'no-such-repo')."""
    import huggingface_hub

    from ..hub_stub import hub_endpoint

    with contextlib.ExitStack() as stack:
        def point(kind: str) -> None:
            monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", stack.enter_context(hub_endpoint(kind)))
        yield point


def test_an_unreachable_hub_fails_at_once_naming_the_id_and_a_local_folder(hub, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    hub("unreachable")
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match=r"^model.pretrained=someone/missing: the Hugging Face hub could not be "
                                                r"reached \(ConnectError: .*\) and the model is not in the local hub "
                                                r"cache; connect to the network, or give a local folder: "
                                                r"model.pretrained=/path/to/folder$"):
        load_parts(ModelConfig(pretrained="someone/missing"))
    assert time.monotonic() - start < 5  # no retries with back-off (about 30 s)
    with pytest.raises(FileNotFoundError, match=r"^model.vae=someone/vae: the Hugging Face hub could not be reached"):
        load_parts(ModelConfig(pretrained=str(DEMO), vae="someone/vae"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match=r"^model.pretrained=someone/missing: not in the local hub cache, and "
                                                r"HF_HUB_OFFLINE is set; download it with network"):
        load_parts(ModelConfig(pretrained="someone/missing"))


def test_a_repository_the_hub_does_not_have_is_named(hub):
    hub("no-such-repo")
    with pytest.raises(FileNotFoundError, match=r"^model.pretrained=someone/missing: no such model on the hub \(or it is "
                                                r"private: log in with `hf auth login`\); check the id, or give a local "
                                                r"folder: model.pretrained=/path/to/folder$"):
        load_parts(ModelConfig(pretrained="someone/missing"))


def test_a_cached_model_loads_from_the_cache_alone_when_the_hub_is_unreachable(hub, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    cache = tmp_path / "hub"
    commit = "0" * 40
    repo = cache / "models--someone--tiny"
    shutil.copytree(DEMO, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    hub("unreachable")
    start = time.monotonic()
    parts = load_parts(ModelConfig(pretrained="someone/tiny"))
    assert time.monotonic() - start < 15  # no file retried with back-off
    assert parts.family == "sd" and parts.source == "someone/tiny"
    out = capsys.readouterr().out
    assert "model.pretrained=someone/tiny: the hub could not be reached (ConnectError" in out
    assert "loading the copy in the local hub cache" in out


def test_whole_pipelines_look_at_the_hub_once_too(hub, tmp_path, monkeypatch):
    """generate/eval (load_pipeline) and fuse load a hub pipeline after the same quick look as training."""
    import huggingface_hub

    from diffalign.models.fuse import fuse_lora
    from diffalign.sampling.generate import load_pipeline

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    hub("unreachable")
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match=r"^model=someone/missing: the Hugging Face hub could not be reached"):
        load_pipeline("someone/missing", device="cpu")
    assert time.monotonic() - start < 5  # no retries with back-off
    hub("no-such-repo")
    lora = tmp_path / "lora.safetensors"
    from safetensors.torch import save_file
    import torch

    save_file({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 32)}, str(lora))
    with pytest.raises(FileNotFoundError, match=r"^--base=someone/missing: no such model on the hub"):
        fuse_lora("someone/missing", lora, tmp_path / "fused")

import pytest
import torch

from diffalign.config.schema import ModelConfig
from diffalign.models.conditioning import encode_prompts, sdxl_time_ids, unet_kwargs
from diffalign.models.loading import load_parts, resolve_source
from diffalign.models.prediction import training_target


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

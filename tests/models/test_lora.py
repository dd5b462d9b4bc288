import pytest
import torch
from diffusers import DiffusionPipeline

from diffalign.config.schema import LoraConfig, ModelConfig
from diffalign.models.loading import load_parts
from diffalign.models.lora import LORA_WEIGHTS, attach_lora, save_lora
from diffalign.models.reference import AdapterDisabledReference, FrozenCopyReference


def _inputs(parts, family):
    g = torch.Generator().manual_seed(0)
    sample, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([3, 700])
    width = 64 if family == "sdxl" else 32
    kwargs = {"encoder_hidden_states": torch.randn(2, 77, width, generator=g)}
    if family == "sdxl":
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 32, generator=g), "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)}
    return sample, t, kwargs


ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
EVERYWHERE = ATTENTION + ["proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2"]


@pytest.mark.parametrize(("family", "targets"), [("sd15", ATTENTION), ("sdxl", ATTENTION), ("sd15", EVERYWHERE)])
def test_saved_lora_loads_in_stock_diffusers(tiny_models, tmp_path, family, targets):
    parts = load_parts(ModelConfig(pretrained=str(tiny_models[family])))
    unet = parts.unet
    sample, t, kwargs = _inputs(parts, "sdxl" if family == "sdxl" else "sd")
    with torch.no_grad():
        base_out = unet(sample, t, **kwargs).sample
    params = attach_lora(unet, LoraConfig(rank=4, alpha=4, target_modules=targets))
    assert all(p.dtype == torch.float32 and p.requires_grad for p in params)
    with torch.no_grad():
        assert torch.equal(unet(sample, t, **kwargs).sample, base_out)  # B = 0 at init
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
        tuned_out = unet(sample, t, **kwargs).sample
        ref_out = AdapterDisabledReference(unet).predict(sample, t, **kwargs)
    assert torch.equal(ref_out, base_out)
    assert not torch.allclose(tuned_out, base_out, atol=1e-3)

    path = save_lora(unet, tmp_path, "sdxl" if family == "sdxl" else "sd")
    assert path == tmp_path / LORA_WEIGHTS and path.exists()
    pipe = DiffusionPipeline.from_pretrained(tiny_models[family])
    pipe.load_lora_weights(tmp_path)
    loaded = {n.split(".lora_A")[0] for n, _ in pipe.unet.named_parameters() if ".lora_A" in n}
    trained = {n.split(".lora_A")[0] for n, _ in unet.named_parameters() if ".lora_A" in n}
    assert loaded == trained
    with torch.no_grad():
        loaded_out = pipe.unet(sample, t, **kwargs).sample
    assert torch.allclose(loaded_out, tuned_out, atol=1e-5)


def test_frozen_copy_reference_is_independent(tiny_models):
    parts = load_parts(ModelConfig(pretrained=str(tiny_models["sd15"])))
    sample, t, kwargs = _inputs(parts, "sd")
    reference = FrozenCopyReference(parts.unet)
    with torch.no_grad():
        for p in parts.unet.parameters():
            p.mul_(1.1)
    assert not any(p.requires_grad for p in reference.unet.parameters())
    assert not torch.allclose(reference.predict(sample, t, **kwargs), parts.unet(sample, t, **kwargs).sample)


def test_unmatched_target_modules_is_an_error(tiny_models):
    parts = load_parts(ModelConfig(pretrained=str(tiny_models["sd15"])))
    with pytest.raises(ValueError, match="matched no module|not found|Target modules"):
        attach_lora(parts.unet, LoraConfig(target_modules=["no_such_layer"]))

"""`load_lora`: a LoRA loads only when every tensor fits a layer of the model, else one message names the file."""

from __future__ import annotations

import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file, save_file

from diffalign.models.lora_files import LORA_WEIGHTS, check_lora_fits, load_lora, lora_tensor_names

from .lora_cases import EARLY, MESSAGES, write_bad_loras


@pytest.fixture(scope="module")
def loras(tiny_models, make_lora, tmp_path_factory):
    """The good SD1.5 LoRA ("good") and every bad case of `lora_cases.MESSAGES`."""
    root = tmp_path_factory.mktemp("loras")
    good = make_lora(tiny_models["sd15"], root / "good", 0.05)
    sdxl = make_lora(tiny_models["sdxl"], root / "sdxl-good", 0.05)
    return {"good": good, "sdxl-good": sdxl, **write_bad_loras(good, sdxl, root / "bad")}


@pytest.fixture(scope="module")
def untouched(tiny_models):
    """One pipeline for the refusals, which must leave it as it was (each test checks)."""
    return DiffusionPipeline.from_pretrained(tiny_models["sd15"])


@pytest.fixture
def pipe(tiny_models):
    return DiffusionPipeline.from_pretrained(tiny_models["sd15"])


def lora_params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in module.named_parameters() if ".lora_" in name}


@pytest.mark.parametrize("case", list(MESSAGES))
def test_a_lora_that_does_not_fit_is_refused_before_the_model_changes(untouched, loras, case):
    file = loras[case] / LORA_WEIGHTS
    with pytest.raises(ValueError) as error:
        load_lora(untouched, loras[case], "tuned")
    assert str(error.value).startswith(f"LoRA {file}") and MESSAGES[case] in str(error.value)
    assert "\n" not in str(error.value)
    assert not lora_params(untouched.unet) and not lora_params(untouched.text_encoder)


@pytest.mark.parametrize("case", list(MESSAGES))
def test_the_fit_is_checked_without_loading_the_model(tiny_models, loras, case):
    with pytest.raises(ValueError, match=f"LoRA {loras[case] / LORA_WEIGHTS}.*" + MESSAGES[case].replace("(", r"\(")):
        check_lora_fits(str(tiny_models["sd15"]), [loras["good"], loras[case]])


def test_a_lora_for_the_model_passes_the_check_without_weights(tiny_models, loras):
    check_lora_fits(str(tiny_models["sd15"]), [loras["good"]])
    check_lora_fits(str(tiny_models["sdxl"]), [loras["sdxl-good"]])  # SDXL: two text encoders, the unet_config
    check_lora_fits(str(tiny_models["sd15"]), [loras["good"]], unet=tiny_models["sd15"] / "unet")


@pytest.mark.parametrize("case", EARLY)
def test_the_header_alone_tells_a_broken_file(loras, case):
    with pytest.raises(ValueError, match=MESSAGES[case].replace("(", r"\(")):
        lora_tensor_names(loras[case])


def test_a_missing_file_names_the_path(untouched, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / LORA_WEIGHTS} not found"):
        load_lora(untouched, tmp_path, "tuned")
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors not found"):
        lora_tensor_names(tmp_path / "nowhere.safetensors")


def test_a_good_lora_loads_whole(pipe, loras):
    load_lora(pipe, loras["good"], "tuned")
    tensors = load_file(loras["good"] / LORA_WEIGHTS)
    loaded = lora_params(pipe.unet)
    assert len(loaded) == len(tensors) == 176
    key = next(iter(tensors))
    assert torch.equal(loaded[key.removeprefix("unet.").replace(".weight", ".tuned.weight")], tensors[key])


def test_text_encoder_and_kohya_loras_load(pipe, tmp_path):
    text = getattr(pipe.text_encoder, "text_model", pipe.text_encoder).encoder.layers[0].self_attn
    kohya = {}
    for module, layer in (("q_proj", text.q_proj), ("out_proj", text.out_proj)):
        width = layer.weight.shape[1]
        kohya[f"lora_te_text_model_encoder_layers_0_self_attn_{module}.lora_down.weight"] = torch.randn(4, width)
        kohya[f"lora_te_text_model_encoder_layers_0_self_attn_{module}.lora_up.weight"] = torch.randn(width, 4)
        kohya[f"lora_te_text_model_encoder_layers_0_self_attn_{module}.alpha"] = torch.tensor(4.0)
    to_q = "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    kohya[f"lora_unet_{to_q}.lora_down.weight"] = torch.randn(4, 32)
    kohya[f"lora_unet_{to_q}.lora_up.weight"] = torch.randn(32, 4)
    save_file(kohya, tmp_path / "kohya.safetensors")
    load_lora(pipe, tmp_path / "kohya.safetensors", "kohya")
    assert len(lora_params(pipe.text_encoder)) == 4 and len(lora_params(pipe.unet)) == 2


def test_a_file_that_mixes_namings_or_lacks_a_factor_is_refused(pipe, loras, tmp_path):
    tensors = load_file(loras["good"] / LORA_WEIGHTS)
    mixed = {(key.replace(".lora_A.", ".lora.down.") if ".attn2." in key else key): t for key, t in tensors.items()}
    (tmp_path / "mixed").mkdir()
    save_file(mixed, tmp_path / "mixed" / LORA_WEIGHTS)
    with pytest.raises(ValueError, match=r"mixed/pytorch_lora_weights.safetensors: 44 of 176 tensors were not loaded "
                                         r"into the model \(e.g. key unet\.\S+\.attn2\.\S+lora\.down\.weight"):
        load_lora(pipe, tmp_path / "mixed", "mixed")

    lacking = {key: t for key, t in tensors.items() if not key.endswith("attn2.to_k.lora_B.weight")}
    save_file(lacking, tmp_path / "lacking.safetensors")
    fresh = DiffusionPipeline.from_pretrained(pipe.config._name_or_path)
    with pytest.raises(ValueError, match=r"lacking.safetensors is incomplete: 11 tensors of the layers it adapts are "
                                         r"not in the file \(e.g. unet\.\S+attn2\.to_k\.lora_B\.weight\)"):
        load_lora(fresh, tmp_path / "lacking.safetensors", "lacking")


def test_a_lora_on_a_layer_peft_cannot_adapt_is_one_line(pipe, tmp_path, capfd):
    norm = "down_blocks.0.resnets.0.norm1"  # a GroupNorm
    save_file({f"unet.{norm}.lora_A.weight": torch.randn(4, 32), f"unet.{norm}.lora_B.weight": torch.randn(32, 4)},
              tmp_path / "norm.safetensors")
    with pytest.raises(ValueError, match=r"norm.safetensors does not load into the model: Target module GroupNorm"):
        load_lora(pipe, tmp_path / "norm.safetensors", "norm")
    assert "unsuccessful" not in capfd.readouterr().err  # diffusers' own log of it stays quiet

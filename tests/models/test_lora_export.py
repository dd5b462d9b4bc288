"""`export_lora`: a run's LoRA in kohya's layout loads with stock diffusers and draws what the trained adapter
draws, alpha included, on the tiny SD1.5, SD2.1-v and SDXL replicas."""

from __future__ import annotations

import copy
import re
import shutil

import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors import safe_open
from safetensors.torch import save_file

from diffalign.config.core import dump_yaml, load_config
from diffalign.config.schema import LoraConfig, RunConfig
from diffalign.models.lora import attach_lora, save_lora
from diffalign.models.lora_export import export_lora
from diffalign.models.lora_files import LORA_WEIGHTS, load_lora, read_lora

RANK, ALPHA = 4, 12.0  # alpha != rank: the layers are scaled by 3


def make_run(base, unet, folder, family: str) -> torch.nn.Module:
    """A LoRA run folder (weights and config.yaml) whose adapter on a copy of `unet` has random non-zero weights;
    returns the adapted UNet."""
    unet = copy.deepcopy(unet)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in attach_lora(unet, LoraConfig(rank=RANK, alpha=ALPHA)):
            p.add_(0.2 * torch.randn(p.shape, generator=generator))
    save_lora(unet, folder, "sdxl" if family == "sdxl" else "sd")
    cfg = load_config(RunConfig, None, [f"model.pretrained={base}", f"lora.rank={RANK}", f"lora.alpha={ALPHA}"])
    (folder / "config.yaml").write_text(dump_yaml(cfg))
    return unet


def draw(pipe) -> torch.Tensor:
    """Two denoising steps of one prompt from a fixed seed, as latents."""
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="latent", height=16, width=16, guidance_scale=1.0)
    return out.images


def drawn_with(pipe, lora) -> torch.Tensor:
    """What `pipe` draws with the LoRA file or folder `lora` loaded by stock `load_lora_weights` (then unloaded)."""
    pipe.load_lora_weights(str(lora))
    try:
        return draw(pipe)
    finally:
        pipe.unload_lora_weights()


@pytest.mark.parametrize("family", ["sd15", "sd21-v", "sdxl"])
def test_kohya_export_draws_what_the_trained_adapter_draws(tiny_models, tmp_path, family):
    base = tiny_models[family]
    pipe = DiffusionPipeline.from_pretrained(base)
    run = tmp_path / "my-run"
    trained = make_run(base, pipe.unet, run, family)
    out, source = export_lora(run, "kohya")
    assert out == run / "my-run-kohya.safetensors" and (source.rank, source.alpha) == (RANK, ALPHA)

    with safe_open(out, framework="pt") as file:
        keys, metadata = list(file.keys()), file.metadata()
        alphas = {file.get_tensor(key).item() for key in keys if key.endswith(".alpha")}
    assert all(re.fullmatch(r"lora_unet_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)", key) for key in keys)
    downs = [key for key in keys if key.endswith(".lora_down.weight")]
    assert downs and {key.replace("lora_down.weight", "alpha") for key in downs} == {k for k in keys if "alpha" in k}
    assert alphas == {ALPHA}
    assert metadata["ss_network_module"] == "networks.lora"
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == (str(RANK), str(ALPHA))
    assert metadata["ss_sd_model_name"] == str(base)
    assert metadata["ss_base_model_version"] == {"sd15": "sd_v1", "sd21-v": "sd_v2", "sdxl": "sdxl_base_v1-0"}[family]

    with torch.no_grad():
        kohya = drawn_with(pipe, out)
        diffusers_copy = drawn_with(pipe, export_lora(run, "diffusers", tmp_path / "copy.safetensors")[0])
        own_file = drawn_with(pipe, run)  # the run's own file: save_lora records the alpha in its metadata
        legacy = tmp_path / "legacy-run"  # a run saved before that: the alpha only in its config.yaml
        legacy.mkdir()
        save_file(read_lora(run), str(legacy / LORA_WEIGHTS))
        shutil.copy(run / "config.yaml", legacy / "config.yaml")
        alpha_lost = drawn_with(pipe, legacy)  # stock diffusers takes alpha = rank
        drawn_by_us = []
        for lora in (run, legacy):  # what generate, eval and fuse load through
            load_lora(pipe, lora, "ours")
            drawn_by_us.append(draw(pipe))
            pipe.unload_lora_weights()
        pipe.unet = trained.eval()
        expected = draw(pipe)
    for drawn in (kohya, diffusers_copy, own_file, *drawn_by_us):
        assert torch.allclose(drawn, expected, atol=1e-5), (drawn - expected).abs().max()
    assert (alpha_lost - expected).abs().max() > 1e-3  # the scaling matters: a file without alpha draws otherwise

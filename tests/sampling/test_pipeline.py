import pytest
from diffusers import DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

from diffalign.config.schema import ModelConfig
from diffalign.models.loading import load_parts
from diffalign.sampling.pipeline import pipeline_from_parts


@pytest.mark.parametrize("family", ["sd21-v", "sdxl"])
def test_pipeline_shares_the_parts_and_samples_with_ddim(tiny_parts, family):
    parts = tiny_parts(family)
    pipe = pipeline_from_parts(parts, parts.unet)
    assert isinstance(pipe, StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline)
    assert pipe.unet is parts.unet and pipe.vae is parts.vae and pipe.text_encoder is parts.text_encoders[0]
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.prediction_type == parts.prediction_type
    assert pipe._progress_bar_config == {"disable": True}
    if family != "sdxl":
        assert pipe.safety_checker is None
    euler = EulerDiscreteScheduler.from_config(parts.noise_scheduler.config)
    assert pipeline_from_parts(parts, parts.unet, euler).scheduler is euler


def test_parts_without_the_vae_are_refused(tiny_models):
    parts = load_parts(ModelConfig(pretrained=str(tiny_models["sd15"])), encoders=False)
    with pytest.raises(ValueError, match="needs the VAE and the text encoders"):
        pipeline_from_parts(parts, parts.unet)

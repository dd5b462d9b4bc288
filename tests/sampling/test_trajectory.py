import numpy as np
import pytest
import torch

from diffalign.sampling.ddim import ddim_scheduler
from diffalign.sampling.pipeline import pipeline_from_parts
from diffalign.sampling.trajectory import decode_latents, sample_trajectory, step_log_prob

PROMPTS = ["a red circle on a blue background", "two green squares"]
SEEDS = [3, 11]


def generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("family", ["sd15", "sd21-v", "sdxl"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_trajectory_images_are_the_pipeline_images(tiny_parts, family, eta):
    """Same seeds, steps, guidance (and η: the step noise continues each image's generator) as the pipeline."""
    parts = tiny_parts(family)
    assert parts.prediction_type == ("v_prediction" if family == "sd21-v" else "epsilon")
    pipe = pipeline_from_parts(parts, parts.unet)
    expected = pipe(PROMPTS, generator=generators(SEEDS), num_inference_steps=4, guidance_scale=5.0, eta=eta,
                    output_type="np").images
    traj = sample_trajectory(parts, parts.unet, PROMPTS, SEEDS, steps=4, guidance=5.0, eta=eta)
    np.testing.assert_allclose(decode_latents(parts.vae, traj.latents[:, -1]).numpy(), expected, atol=1e-5)
    assert traj.images.dtype == np.uint8 and traj.images.shape == (2, 32, 32, 3)
    assert np.abs(traj.images.astype(int) - (expected * 255).round()).max() <= 1
    assert traj.latents.shape == (2, 5, 4, 8, 8) and traj.timesteps.tolist() == [751, 501, 251, 1]
    assert traj.prev_timesteps.tolist() == [501, 251, 1, -249]
    assert (traj.log_probs is None) == (eta == 0) and (eta == 0 or traj.log_probs.shape == (2, 4))
    initial = torch.cat([torch.randn((1, 4, 8, 8), generator=g) for g in generators(SEEDS)])
    assert torch.equal(traj.latents[:, 0], initial)  # x_T: the noise of each image's seed


def test_a_batch_of_four_equals_four_batches_of_one(tiny_parts):
    parts = tiny_parts("sd15")
    prompts, seeds = ["a", "b c", "d", "e f g"], [5, 6, 7, 8]
    batch = sample_trajectory(parts, parts.unet, prompts, seeds, steps=3, guidance=3.0, eta=1.0, decode=False)
    for i in range(4):
        one = sample_trajectory(parts, parts.unet, prompts[i : i + 1], seeds[i : i + 1], steps=3, guidance=3.0,
                                eta=1.0, decode=False)
        torch.testing.assert_close(one.latents, batch.latents[i : i + 1], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(one.log_probs, batch.log_probs[i : i + 1], rtol=1e-4, atol=1e-5)
    subset = batch.select([2, 0])
    assert subset.prompts == ["d", "a"] and torch.equal(subset.latents[1], batch.latents[0])


def test_rescoring_a_stored_step_gives_its_log_prob_with_gradient(tiny_parts):
    parts = tiny_parts("sd15")
    traj = sample_trajectory(parts, parts.unet, PROMPTS, SEEDS, steps=4, guidance=5.0, eta=1.0, decode=False)
    scheduler = ddim_scheduler(parts)
    k = torch.tensor([3, 1])  # one step per sample (D3PO draws a permutation of the steps per sample)
    parts.unet.zero_grad()
    log_prob = step_log_prob(parts.unet, scheduler, traj, k)
    torch.testing.assert_close(log_prob, traj.log_probs[torch.arange(2), k], rtol=0, atol=2e-5)
    log_prob.sum().backward()
    grads = [p.grad for p in parts.unet.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0
    parts.unet.zero_grad(set_to_none=True)
    same = step_log_prob(lambda x, t, **kw: parts.unet(x, t, **kw).sample, scheduler, traj, 2)  # a predict function
    torch.testing.assert_close(same.detach(), traj.log_probs[:, 2], rtol=0, atol=2e-5)


def test_shared_initial_noise_and_different_step_noise(tiny_parts):
    """D3PO's rollouts: the images of a prompt start from one x_T and differ through the η-noise."""
    parts = tiny_parts("sd15")
    x_t = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0)).repeat(2, 1, 1, 1)
    traj = sample_trajectory(parts, parts.unet, ["a", "a"], [1, 2], steps=3, eta=1.0, initial_latents=x_t,
                             decode=False)
    assert torch.equal(traj.latents[0, 0], traj.latents[1, 0])
    assert not torch.allclose(traj.latents[0, -1], traj.latents[1, -1])


def test_unet_never_sees_a_negative_timestep_when_sampling(tiny_parts, record_calls):
    parts = tiny_parts("sd15")
    with record_calls(parts.unet) as calls:
        traj = sample_trajectory(parts, parts.unet, ["a"], [0], steps=5, guidance=2.0, eta=1.0, decode=False)
    seen = torch.cat([t.reshape(-1) for t, _ in calls])
    assert len(calls) == 5 and seen.min() >= 0 and traj.prev_timesteps[-1] < 0


def test_sdxl_gets_pooled_text_and_time_ids(tiny_parts, record_calls):
    parts = tiny_parts("sdxl")
    with record_calls(parts.unet) as calls:
        sample_trajectory(parts, parts.unet, PROMPTS, SEEDS, steps=2, guidance=4.0, eta=0.0, decode=False)
    added = calls[0][1]["added_cond_kwargs"]
    assert added["time_ids"].tolist() == [[32, 32, 0, 0, 32, 32]] * 4  # (uncond, cond) × 2 images
    text = added["text_embeds"]
    assert text.shape == (4, 32) and text[:2].eq(0).all() and text[2:].ne(0).any()  # SDXL zeroes the uncond
    assert calls[0][1]["encoder_hidden_states"].shape == (4, 77, 64)  # both encoders' states concatenated

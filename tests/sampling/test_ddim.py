import pytest
import torch
from diffusers import DDIMScheduler

from diffalign.models.tiny import SCHEDULER_CONFIG
from diffalign.sampling.ddim import ddim_step_with_logprob


def scheduler(steps: int = 20, **config) -> DDIMScheduler:
    s = DDIMScheduler(**{**SCHEDULER_CONFIG, **config})
    s.set_timesteps(steps)
    return s


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_log_prob_is_the_gaussian_density_averaged_over_elements(prediction_type):
    s = scheduler(prediction_type=prediction_type)
    x, out = randn(3, 4, 5, 5, seed=1), randn(3, 4, 5, 5, seed=2)
    t = torch.tensor([951, 501, 1])  # one timestep per sample; the last steps to ᾱ_prev = final ᾱ
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    step = ddim_step_with_logprob(s, out, t, x, eta=0.7, generator=gens)
    for b in range(3):  # independently: diffusers' own step at this sample's timestep, and torch's Normal
        noise = torch.randn((1, 4, 5, 5), generator=torch.Generator().manual_seed(b))
        ref = s.step(out[b : b + 1], int(t[b]), x[b : b + 1], eta=0.7, variance_noise=noise).prev_sample
        torch.testing.assert_close(step.prev_sample[b : b + 1], ref, rtol=1e-5, atol=1e-5)
        mean = s.step(out[b : b + 1], int(t[b]), x[b : b + 1], eta=0.7, variance_noise=torch.zeros_like(noise))
        prev = int(t[b]) - 1000 // 20
        a_t, a_prev = s.alphas_cumprod[int(t[b])], s.alphas_cumprod[prev] if prev >= 0 else s.final_alpha_cumprod
        sigma = 0.7 * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        expected = torch.distributions.Normal(mean.prev_sample, sigma).log_prob(step.prev_sample[b : b + 1]).mean()
        assert step.log_prob[b].item() == pytest.approx(expected.item(), abs=1e-5)
    rescored = ddim_step_with_logprob(s, out, t, x, eta=0.7, prev_sample=step.prev_sample)
    torch.testing.assert_close(rescored.log_prob, step.log_prob, rtol=0, atol=1e-6)
    assert torch.equal(rescored.prev_sample, step.prev_sample)


@pytest.mark.parametrize("config", [dict(clip_sample=True, clip_sample_range=0.5), dict(thresholding=True, sample_max_value=1.5)])
def test_clipping_and_thresholding_follow_the_scheduler_config(config):
    s = scheduler(**config)
    x, out = 3 * randn(2, 4, 5, 5, seed=3), randn(2, 4, 5, 5, seed=4)
    step = ddim_step_with_logprob(s, out, 501, x, eta=0.0)
    torch.testing.assert_close(step.prev_sample, s.step(out, 501, x, eta=0.0).prev_sample, rtol=1e-5, atol=1e-5)
    plain = ddim_step_with_logprob(scheduler(), out, 501, x, eta=0.0)
    assert not torch.allclose(step.prev_sample, plain.prev_sample)  # the clipping did act


def test_d3po_reference_vector():
    """vectors.json 'd3po(t=501,prev=451,eta=1,...)': float64 numpy values of the official formula."""
    s = scheduler()
    x_t = torch.tensor([[[[0.3, -0.2], [1.0, 0.5]]], [[[0.3, -0.2], [1.0, 0.5]]]])
    e_ref = torch.tensor([[[[0.2, -0.1], [0.4, 0.3]]], [[[0.1, 0.0], [0.5, 0.2]]]])
    e_theta = e_ref + torch.tensor([[[[0.002, -0.001], [0.0015, 0.0]]], [[[0.5, -0.5], [-0.5, 0.5]]]])
    x_prev = torch.tensor([0.4971888217, -0.6266339034, 1.657427263, 0.565705231,
                           0.1806136704, 0.1192623972, 1.029495885, -0.008462609877]).reshape(2, 1, 2, 2)
    theta = ddim_step_with_logprob(s, e_theta, 501, x_t, eta=1.0, prev_sample=x_prev)
    ref = ddim_step_with_logprob(s, e_ref, torch.tensor([501, 501]), x_t, eta=1.0, prev_timestep=451, prev_sample=x_prev)
    assert theta.std.tolist() == pytest.approx([0.4293211493] * 2, abs=1e-6)
    assert theta.log_prob.tolist() == pytest.approx([-0.5165541282, -0.2070520575], abs=1e-6)
    assert ref.log_prob.tolist() == pytest.approx([-0.5158884929, -0.3458884929], abs=1e-6)
    assert (theta.log_prob - ref.log_prob).tolist() == pytest.approx([-0.0006656353323, 0.1388364354], abs=1e-6)


def test_rescoring_carries_the_gradient_of_the_model_output():
    s = scheduler()
    x, out = randn(2, 4, 3, 3, seed=5), randn(2, 4, 3, 3, seed=6)
    prev = ddim_step_with_logprob(s, out, 501, x, eta=1.0, generator=torch.Generator().manual_seed(0)).prev_sample
    trained = out.clone().requires_grad_(True)
    ddim_step_with_logprob(s, trained, 501, x, eta=1.0, prev_sample=prev).log_prob.sum().backward()
    assert trained.grad is not None and trained.grad.abs().sum() > 0


def test_eta_zero_has_no_log_prob_and_cannot_rescore():
    s = scheduler()
    x, out = randn(2, 4, 3, 3, seed=7), randn(2, 4, 3, 3, seed=8)
    step = ddim_step_with_logprob(s, out, 501, x, eta=0.0)
    assert step.log_prob is None and torch.equal(step.prev_sample, step.mean) and step.std.eq(0).all()
    with pytest.raises(ValueError, match="deterministic"):
        ddim_step_with_logprob(s, out, 501, x, eta=0.0, prev_sample=step.prev_sample)
    with pytest.raises(ValueError, match="sigma_t = 0"):  # ᾱ_prev = 1 at the last step: no density either
        ddim_step_with_logprob(scheduler(set_alpha_to_one=True), out, 1, x, eta=1.0)


def test_noise_of_a_batch_equals_noise_of_single_samples():
    s = scheduler()
    x, out = randn(4, 4, 3, 3, seed=9), randn(4, 4, 3, 3, seed=10)
    t = torch.tensor([901, 451, 51, 1])
    batch = ddim_step_with_logprob(s, out, t, x, eta=1.0, generator=[torch.Generator().manual_seed(i) for i in range(4)])
    for i in range(4):
        one = ddim_step_with_logprob(s, out[i : i + 1], t[i], x[i : i + 1], eta=1.0,
                                     generator=[torch.Generator().manual_seed(i)])
        torch.testing.assert_close(one.prev_sample, batch.prev_sample[i : i + 1], rtol=0, atol=1e-6)
        torch.testing.assert_close(one.log_prob, batch.log_prob[i : i + 1], rtol=0, atol=1e-6)

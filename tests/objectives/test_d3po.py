"""D3PO's per-step loss against the hand-computed vector (one DDIM step t 501 → 451, η 1, β 0.1, ε 0.1)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from diffalign.objectives.d3po import d3po_loss

VECTOR = json.loads((Path(__file__).resolve().parents[1] / "reference_vectors.json").read_text())[
    "d3po(t=501,prev=451,eta=1,beta=0.1,eps=0.1)"]


def _log_probs():
    theta = torch.tensor(VECTOR["logp_theta"], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor(VECTOR["logp_ref"], dtype=torch.float64)
    return theta, ref


def test_loss_matches_the_vector_and_the_clipped_sample_has_exactly_zero_gradient():
    theta, ref = _log_probs()  # sample 0 preferred (inside the clip), sample 1 rejected (ratio clipped to 1.1)
    out = d3po_loss(theta[:1], ref[:1], theta[1:], ref[1:], beta=0.1, clip=0.1)
    assert out.loss.item() == pytest.approx(VECTOR["loss"], abs=1e-9)
    assert out.metrics["clipped"].item() == 0.5
    out.loss.backward()
    assert theta.grad[1].item() == 0.0  # exactly: the clamp cut the rejected sample's gradient
    # d loss / d logπ_θ,w = −σ(−z)·β (unclamped, d log r / d logπ = 1)
    z = VECTOR["z"][0]
    assert theta.grad[0].item() == pytest.approx(-0.1 / (1 + math.exp(z)), rel=1e-9)


def test_the_vector_through_the_ddim_log_probability_gives_the_same_gradient_on_the_prediction():
    """The loss composed with `sampling.ddim`'s log-probability: the autograd gradients of the vector."""
    from diffusers import DDIMScheduler

    from diffalign.sampling.ddim import ddim_step_with_logprob

    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    scheduler.set_timesteps(20)
    x_t = torch.tensor([[[[0.3, -0.2], [1.0, 0.5]]]] * 2, dtype=torch.float64)
    e_ref = torch.tensor([[[[0.2, -0.1], [0.4, 0.3]]], [[[0.1, 0.0], [0.5, 0.2]]]], dtype=torch.float64)
    offset = torch.tensor([[[[0.002, -0.001], [0.0015, 0.0]]], [[[0.5, -0.5], [-0.5, 0.5]]]], dtype=torch.float64)
    e_theta = (e_ref + offset).requires_grad_(True)
    x_prev = torch.tensor(VECTOR["x_prev"], dtype=torch.float64).reshape(2, 1, 2, 2)
    t, prev = torch.tensor([501, 501]), torch.tensor([451, 451])
    theta = ddim_step_with_logprob(scheduler, e_theta, t, x_t, eta=1.0, prev_timestep=prev, prev_sample=x_prev).log_prob
    ref = ddim_step_with_logprob(scheduler, e_ref, t, x_t, eta=1.0, prev_timestep=prev, prev_sample=x_prev).log_prob
    torch.testing.assert_close(theta.detach(), torch.tensor(VECTOR["logp_theta"], dtype=torch.float64), rtol=0, atol=1e-6)
    out = d3po_loss(theta[:1], ref[:1], theta[1:], ref[1:])
    out.loss.backward()
    grads = VECTOR["autograd"]
    torch.testing.assert_close(e_theta.grad[0].flatten(), torch.tensor(grads["grad_eps_theta_sample0"], dtype=torch.float64),
                               rtol=1e-5, atol=1e-8)
    assert torch.equal(e_theta.grad[1], torch.zeros_like(e_theta.grad[1]))


def test_ties_give_ln2_and_no_gradient_and_policy_equal_to_reference_gives_ln2():
    theta, ref = _log_probs()
    out = d3po_loss(theta[:1], ref[:1], theta[1:], ref[1:], tie=torch.tensor([True]))
    assert out.loss.item() == pytest.approx(math.log(2))
    out.loss.backward()
    assert torch.equal(theta.grad, torch.zeros_like(theta.grad))
    same = d3po_loss(ref[:1], ref[:1], ref[1:], ref[1:])
    assert same.loss.item() == pytest.approx(math.log(2)) and same.metrics["implicit_acc"].item() == 0.5

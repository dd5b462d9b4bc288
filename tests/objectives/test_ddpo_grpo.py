"""DDPO's and GRPO's PPO-clipped step loss and the step KL of DPOK, against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from diffalign.objectives import ddpo_loss, gaussian_step_kl, grpo_loss


def _t(values, grad=False):
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def _policy(ratios):
    """log π_θ (with grad) and log π_old such that exp(log π_θ − log π_old) is each given ratio."""
    old = _t([-1.0, -2.0, -0.5][: len(ratios)])
    return (old + torch.log(_t(ratios))).detach().requires_grad_(True), old


def test_a_sample_past_the_trust_region_in_its_favoured_direction_has_exactly_zero_gradient():
    # ε 0.2. Sample 0: A 2, ρ 1.5 > 1.2 → max(−3, −2.4) = −2.4, the constant branch.
    # Sample 1: A 1, ρ 1.1 inside → −1.1.
    # Sample 2: A 1, ρ 0.5 < 0.8, but unfavourable → max(−0.5, −0.8) = −0.5.
    log_prob, old = _policy([1.5, 1.1, 0.5])
    out = ddpo_loss(log_prob, old, _t([2.0, 1.0, 1.0]), clip_range=0.2, advantage_clip=10.0)
    assert out.loss.item() == pytest.approx(-4.0 / 3, rel=1e-12)  # (−2.4 − 1.1 − 0.5) / 3
    out.loss.backward()
    assert log_prob.grad[0].item() == 0.0  # exactly
    # d(−A·ρ)/d log π_θ = −A·ρ, over B = 3
    assert log_prob.grad[1:].tolist() == pytest.approx([-1.1 / 3, -0.5 / 3], rel=1e-12)
    metrics = {k: v.item() for k, v in out.metrics.items()}
    assert metrics == pytest.approx({
        "policy_loss": -4.0 / 3,
        "ratio": 3.1 / 3,  # (1.5 + 1.1 + 0.5) / 3
        "clip_fraction": 2 / 3,  # |ρ − 1| > 0.2 for samples 0 and 2 (2 is counted though it keeps its gradient)
        # ½·(ln²1.5 + ln²1.1 + ln²0.5)/3 = ½·(0.1644020 + 0.0090840 + 0.4804530)/3
        "approx_kl": 0.10898983303094993,
        "advantage": 4 / 3,
    }, rel=1e-12)
    assert all(v.ndim == 0 and not v.requires_grad for v in out.metrics.values())


def test_at_the_sampling_policy_the_loss_is_the_plain_policy_gradient():
    log_prob, old = _policy([1.0, 1.0, 1.0])
    out = ddpo_loss(log_prob, old, _t([0.5, -1.5, 3.0]), clip_range=1e-4, advantage_clip=10.0)
    assert out.loss.item() == pytest.approx(-2.0 / 3, rel=1e-12)  # −(0.5 − 1.5 + 3)/3
    out.loss.backward()
    assert log_prob.grad.tolist() == pytest.approx([-0.5 / 3, 0.5, -1.0], rel=1e-12)  # −A/B
    assert out.metrics["ratio"].item() == 1.0
    assert out.metrics["clip_fraction"].item() == 0.0 and out.metrics["approx_kl"].item() == 0.0


def test_advantages_are_clipped_and_old_log_prob_and_advantages_carry_no_gradient():
    log_prob, old = _policy([1.0, 1.0, 1.0])
    old.requires_grad_(True)
    advantages = _t([7.0, -9.0, 2.0], grad=True)
    out = ddpo_loss(log_prob, old, advantages, clip_range=0.1, advantage_clip=5.0)
    assert out.loss.item() == pytest.approx(-2.0 / 3, rel=1e-12)  # A → (5, −5, 2)
    assert out.metrics["advantage"].item() == pytest.approx(4.0, rel=1e-12)  # (5 + 5 + 2)/3
    out.loss.backward()
    assert log_prob.grad.tolist() == pytest.approx([-5 / 3, 5 / 3, -2 / 3], rel=1e-12)
    assert old.grad is None and advantages.grad is None


def test_the_kl_term_adds_its_weighted_mean_and_its_gradient():
    log_prob, old = _policy([1.0, 1.0])
    kl = _t([0.3, 0.1], grad=True)
    out = ddpo_loss(log_prob, old, _t([1.0, -1.0]), clip_range=0.1, advantage_clip=5.0, kl=kl, kl_weight=0.5)
    assert out.loss.item() == pytest.approx(0.1, rel=1e-12)  # policy 0 + 0.5·(0.3 + 0.1)/2
    assert out.metrics["policy_loss"].item() == 0.0 and out.metrics["kl"].item() == pytest.approx(0.2, rel=1e-12)
    out.loss.backward()
    assert kl.grad.tolist() == pytest.approx([0.25, 0.25], rel=1e-12)  # 0.5 / 2
    unweighted = ddpo_loss(log_prob, old, _t([1.0, -1.0]), clip_range=0.1, advantage_clip=5.0, kl=kl)
    assert unweighted.loss.item() == 0.0 and unweighted.metrics["kl"].item() == pytest.approx(0.2)
    assert "kl" not in ddpo_loss(log_prob, old, _t([1.0, -1.0]), clip_range=0.1, advantage_clip=5.0).metrics


def test_a_nan_advantage_counts_as_zero_and_poisons_nothing():
    log_prob, old = _policy([1.1, 1.0])
    out = ddpo_loss(log_prob, old, _t([math.nan, 1.0]), clip_range=0.2, advantage_clip=5.0)
    assert out.loss.item() == pytest.approx(-0.5, rel=1e-12)  # (0 − 1)/2
    out.loss.backward()
    assert log_prob.grad.tolist() == pytest.approx([0.0, -0.5], rel=1e-12)
    assert out.metrics["advantage"].item() == pytest.approx(0.5, rel=1e-12)
    assert all(math.isfinite(v.item()) for v in out.metrics.values())


def test_grpo_is_the_ddpo_loss_on_its_advantages():
    log_prob, old = _policy([1.5, 1.1, 0.5])
    kl = _t([0.2, 0.4, 0.0])
    out = grpo_loss(log_prob, old, _t([2.0, 1.0, 1.0]), clip_range=0.2, advantage_clip=10.0, kl=kl, kl_weight=0.3)
    assert out.loss.item() == pytest.approx(-4.0 / 3 + 0.3 * 0.2, rel=1e-12)  # the first test's loss + 0.3·0.6/3
    out.loss.backward()
    assert log_prob.grad.tolist() == pytest.approx([0.0, -1.1 / 3, -0.5 / 3], rel=1e-12)
    assert set(out.metrics) == {"policy_loss", "ratio", "clip_fraction", "approx_kl", "advantage", "kl"}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"kl_weight": 0.1}, "ddpo_loss: kl_weight is 0.1 but no kl was given; pass each sample's KL to the base model "
                         "(objectives.ddpo.gaussian_step_kl) or set kl_weight to 0"),
    ({"kl": torch.zeros(3)}, "ddpo_loss: the inputs disagree on the batch size: {'log_prob': (2,), "
                             "'old_log_prob': (2,), 'advantages': (2,), 'kl': (3,)}"),
    ({"clip_range": 0.0}, "ddpo_loss: clip_range must be positive, not 0.0"),
])
def test_inconsistent_arguments_are_refused(kwargs, message):
    args = {"clip_range": 0.1, "advantage_clip": 5.0} | kwargs
    with pytest.raises(ValueError) as error:
        ddpo_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), **args)
    assert str(error.value) == message


def test_a_per_element_log_prob_is_refused():
    with pytest.raises(ValueError, match=r"^ddpo_loss: log_prob must hold one value per sample, shape \(B,\), "
                                         r"not \(2, 4\)$"):
        ddpo_loss(torch.zeros(2, 4), torch.zeros(2), torch.zeros(2), clip_range=0.1, advantage_clip=5.0)


def test_gaussian_step_kl_is_the_mean_squared_gap_over_twice_the_variance():
    ref = _t([[[[0.5, 0.5], [0.5, 0.5]]], [[[0.0, 1.0], [2.0, 3.0]]]])
    mean = (ref + _t([[[[0.1, -0.2], [0.3, 0.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])).detach().requires_grad_(True)
    ref.requires_grad_(True)
    kl = gaussian_step_kl(mean, ref, _t([0.5, 2.0]))
    # sample 0: (0.01 + 0.04 + 0.09 + 0)/4 = 0.035, over 2·0.25 → 0.07; sample 1: 1 over 2·4 → 0.125
    assert kl.tolist() == pytest.approx([0.07, 0.125], rel=1e-12)
    kl.sum().backward()
    # d/dμ = (μ − μ_ref)/(n·σ²): sample 0 n·σ² = 4·0.25 = 1; sample 1 4·4 = 16
    assert mean.grad[0].flatten().tolist() == pytest.approx([0.1, -0.2, 0.3, 0.0], rel=1e-12)
    assert mean.grad[1].flatten().tolist() == pytest.approx([0.0625] * 4, rel=1e-12)
    assert ref.grad is None


def test_gaussian_step_kl_agrees_with_torch_distributions_per_element():
    generator = torch.Generator().manual_seed(0)
    mean, ref = torch.randn(3, 4, 2, 2, generator=generator), torch.randn(3, 4, 2, 2, generator=generator)
    std = torch.tensor([0.3, 1.0, 2.5])
    s = std.reshape(-1, 1, 1, 1).expand_as(mean)
    Normal = torch.distributions.Normal
    expected = torch.distributions.kl_divergence(Normal(mean, s), Normal(ref, s))
    torch.testing.assert_close(gaussian_step_kl(mean, ref, std), expected.flatten(1).mean(1))


def test_gaussian_step_kl_refuses_a_deterministic_step_and_a_wrong_std_shape():
    x = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError) as error:
        gaussian_step_kl(x, x, torch.tensor([0.5, 0.0]))
    assert str(error.value) == ("gaussian_step_kl: the step's std is 0.0 for sample 1: a DDIM step at eta 0 is "
                                "deterministic and has no KL; sample with eta > 0")
    with pytest.raises(ValueError, match=r"^gaussian_step_kl: std must have shape \(2,\), one per sample, not \(\)$"):
        gaussian_step_kl(x, x, torch.tensor(0.5))

"""DGPO's group-DPO loss against hand-computed values (objectives/dgpo.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diffalign.objectives.dgpo import dgpo_loss, group_sums

# Two prompts' groups of three images.
ADV = torch.tensor([1.0, 0.0, -1.0, 0.5, 0.5, -1.0])
MODEL = torch.tensor([0.10, 0.20, 0.30, 0.40, 0.10, 0.20])
REF = torch.tensor([0.20, 0.20, 0.20, 0.30, 0.30, 0.10])
GROUPS = torch.tensor([0, 0, 0, 1, 1, 1])
BETA = 10.0
# Group 0: Σ A(e - e_ref) = 1(-0.1) + 0 + (-1)(0.1) = -0.2, s_0 = 10(-0.2)/3 = -0.66667, σ(s_0) = 0.339244
# Group 1: 0.5(0.1) + 0.5(-0.2) + (-1)(0.1) = -0.15, s_1 = 10(-0.15)/3 = -0.5, σ(s_1) = 0.377541
# loss = [0.339244 (0.1 - 0.3) + 0.377541 (0.5·0.4 + 0.5·0.1 - 0.2)] / 6 = -0.00816195
# group_loss = [-log σ(0.66667) - log σ(0.5)] / 2 = (0.414354 + 0.474077) / 2 = 0.444224


def test_loss_and_metrics_match_hand_computed_values() -> None:
    out = dgpo_loss(MODEL, REF, ADV, GROUPS, beta=BETA, advantage_clip=5.0)
    assert out.loss.item() == pytest.approx(-0.00816195, abs=1e-7)
    assert out.metrics["group_loss"].item() == pytest.approx(0.444224, abs=1e-6)
    assert out.metrics["group_margin"].item() == pytest.approx((0.666667 + 0.5) / 2, abs=1e-6)
    assert out.metrics["weight"].item() == pytest.approx((0.339244 + 0.377541) / 2, abs=1e-6)
    assert out.metrics["positive"].item() == pytest.approx(3 / 6)


def test_gradient_is_the_group_likelihood_gradient_over_beta() -> None:
    model = MODEL.clone().requires_grad_(True)
    dgpo_loss(model, REF, ADV, GROUPS, beta=BETA, advantage_clip=5.0).loss.backward()
    surrogate = model.grad.clone()
    paper = MODEL.clone().requires_grad_(True)
    s = BETA * group_sums(ADV * (paper - REF), GROUPS) / 3
    (-F.logsigmoid(-s)).mean().backward()
    torch.testing.assert_close(BETA * surrogate, paper.grad)


def test_at_the_reference_every_group_weighs_one_half_and_costs_ln2() -> None:
    out = dgpo_loss(REF, REF, ADV, GROUPS, beta=BETA, advantage_clip=5.0)
    assert out.metrics["weight"].item() == pytest.approx(0.5)
    assert out.metrics["group_loss"].item() == pytest.approx(math.log(2))
    model = REF.clone().requires_grad_(True)
    dgpo_loss(model, REF, ADV, GROUPS, beta=BETA, advantage_clip=5.0).loss.backward()
    torch.testing.assert_close(model.grad, 0.5 * ADV / 6)  # positives pushed down in error, negatives up


def test_advantages_are_clamped_and_nan_counts_zero() -> None:
    adv = torch.tensor([7.0, float("nan"), -1.0])
    model = torch.tensor([0.1, 0.2, 0.3], requires_grad=True)
    ref = torch.tensor([0.1, 0.2, 0.3])
    dgpo_loss(model, ref, adv, torch.zeros(3, dtype=torch.long), beta=1.0, advantage_clip=2.0).loss.backward()
    torch.testing.assert_close(model.grad, torch.tensor([0.5 * 2.0, 0.0, -0.5]) / 3)


def test_clip_stops_the_gradient_past_the_trust_region_in_the_advantages_direction() -> None:
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    model = torch.tensor([0.10, 0.10, 0.30, 0.30], requires_grad=True)
    # ρ = exp(old - model): 1.105 (A>0, past 1+0.05: clipped), 0.905 (A>0, inside), 0.905 (A<0, past 1-0.05:
    # clipped), 1.105 (A<0, inside)
    old = torch.tensor([0.20, 0.00, 0.20, 0.40])
    out = dgpo_loss(model, model.detach(), adv, torch.tensor([0, 0, 1, 1]), beta=1.0, advantage_clip=5.0,
                    old_err=old, clip_range=0.05)
    out.loss.backward()
    assert out.metrics["clip_fraction"].item() == pytest.approx(0.5)
    assert model.grad[0].item() == 0.0 and model.grad[2].item() == 0.0
    torch.testing.assert_close(model.grad[[1, 3]], torch.tensor([0.5, -0.5]) / 4)
    unclipped = dgpo_loss(model.detach(), model.detach(), adv, torch.tensor([0, 0, 1, 1]), beta=1.0,
                          advantage_clip=5.0)
    torch.testing.assert_close(out.loss.detach(), unclipped.loss)  # the value is kept, only the gradient goes


def test_kl_term_is_weighted_and_reported() -> None:
    kl = torch.tensor([0.2, 0.4, 0.0, 0.2, 0.0, 0.4])
    plain = dgpo_loss(MODEL, REF, ADV, GROUPS, beta=BETA, advantage_clip=5.0)
    out = dgpo_loss(MODEL, REF, ADV, GROUPS, beta=BETA, advantage_clip=5.0, kl=kl, kl_weight=0.5)
    assert out.loss.item() == pytest.approx(plain.loss.item() + 0.5 * 0.2, abs=1e-7)
    assert out.metrics["kl"].item() == pytest.approx(0.2)


def test_missing_inputs_of_the_optional_terms_are_refused() -> None:
    with pytest.raises(ValueError, match="clip_range > 0 needs old_err"):
        dgpo_loss(MODEL, REF, ADV, GROUPS, beta=BETA, advantage_clip=5.0, clip_range=0.1)
    with pytest.raises(ValueError, match="kl_weight > 0 needs kl"):
        dgpo_loss(MODEL, REF, ADV, GROUPS, beta=BETA, advantage_clip=5.0, kl_weight=0.1)

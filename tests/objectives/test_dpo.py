import math

import pytest
import torch

from diffalign.objectives import denoising_error, dpo_loss, dpo_logits


def test_loss_is_ln2_when_model_equals_reference():
    err = torch.tensor([0.3, 0.7, 0.1])
    out = dpo_loss(err, err.flip(0), err, err.flip(0), beta=5000.0)
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert out.metrics["implicit_acc"].item() == 0.5  # ties count one half
    assert out.metrics["reward_margin"].item() == 0.0


def test_hand_computed_value():
    # pair 1: model improved the winner by 1e-4 relative to the reference -> logit = -0.5*2000*(-1e-4) = 0.1
    # pair 2: model made the winner worse by 3e-4 -> logit = -0.3
    mw, ml = torch.tensor([0.1000, 0.2003]), torch.tensor([0.2000, 0.1000])
    rw, rl = torch.tensor([0.1001, 0.2000]), torch.tensor([0.2000, 0.1000])
    logits = dpo_logits(mw, ml, rw, rl, beta=2000.0)
    assert logits.tolist() == pytest.approx([0.1, -0.3], abs=1e-5)
    expected = (math.log1p(math.exp(-0.1)) + math.log1p(math.exp(0.3))) / 2
    out = dpo_loss(mw, ml, rw, rl, beta=2000.0)
    assert out.loss.item() == pytest.approx(expected, abs=1e-4)  # float32 inputs
    assert out.metrics["implicit_acc"].item() == 0.5
    assert out.metrics["reward_margin"].item() == pytest.approx(-0.1, abs=1e-5)


def test_loss_falls_when_winner_error_falls_and_gradient_sign():
    ref_w, ref_l = torch.tensor([0.5]), torch.tensor([0.5])
    base = dpo_loss(ref_w.clone(), ref_l.clone(), ref_w, ref_l, beta=1000.0).loss
    better = dpo_loss(ref_w - 1e-3, ref_l.clone(), ref_w, ref_l, beta=1000.0).loss
    worse = dpo_loss(ref_w.clone(), ref_l - 1e-3, ref_w, ref_l, beta=1000.0).loss
    assert better < base < worse
    model_w = ref_w.clone().requires_grad_(True)
    model_l = ref_l.clone().requires_grad_(True)
    dpo_loss(model_w, model_l, ref_w, ref_l, beta=1000.0).loss.backward()
    # descending the gradient lowers the winner's error and raises the loser's
    assert model_w.grad.item() > 0 and model_l.grad.item() < 0
    # at the start the gradient is beta/4 per unit error: d/dx -log σ(-β/2 x) at 0 = β/4, averaged over 1 pair
    assert model_w.grad.item() == pytest.approx(1000.0 / 4)


def test_reference_gets_no_gradient_and_weight_scales_logit():
    ref_w = torch.tensor([0.2], requires_grad=True)
    out = dpo_loss(torch.tensor([0.1]), torch.tensor([0.2]), ref_w, torch.tensor([0.2]), beta=10.0)
    assert not out.loss.requires_grad
    plain = dpo_loss(torch.tensor([0.1]), torch.tensor([0.2]), torch.tensor([0.2]), torch.tensor([0.2]), 10.0)
    weighted = dpo_loss(
        torch.tensor([0.1]), torch.tensor([0.2]), torch.tensor([0.2]), torch.tensor([0.2]), 5.0, weight=torch.tensor([2.0])
    )
    assert weighted.loss.item() == pytest.approx(plain.loss.item())


def test_denoising_error_is_mean_over_elements():
    pred = torch.zeros(2, 4, 8, 8)
    target = torch.ones(2, 4, 8, 8)
    target[1] *= 2
    assert denoising_error(pred, target).tolist() == [1.0, 4.0]

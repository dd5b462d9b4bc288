"""MaPO, Diffusion-KTO, DCPO and the IPO / hinge forms of the DPO loss, against the shared vectors and
values computed by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from diffalign.objectives import PAIR_LOSSES, dcpo_loss, dpo_loss, error_odds, kto_loss, mapo_loss

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "reference_vectors.json").read_text())


def _t(values):
    return torch.tensor(values, dtype=torch.float64)


def test_mapo_against_its_vector():
    v = VECTORS["mapo(beta_mapo=0.1,snr=0.5,T=1000)"]
    out = mapo_loss(_t(v["mse_w"]), _t(v["mse_l"]), beta=0.1, snr=0.5, scale=1000.0)
    assert out.loss.item() == pytest.approx(v["loss"], rel=1e-8)
    log_odds = error_odds(_t(v["mse_w"]), 0.5) - error_odds(_t(v["mse_l"]), 0.5)
    assert log_odds.tolist() == pytest.approx(v["log_odds"], rel=1e-7)
    assert out.metrics["ratio_loss"].item() == pytest.approx(-sum(v["ratio_loss"]) / 2, rel=1e-8)
    assert out.metrics["implicit_acc"].item() == 0.5


def test_mapo_by_hand_and_its_gradient():
    # e_w = 0, e_l = 2: f(0) = 1, f(2) = 1/(e - 1); margin = 1 - 1/(e-1) = 0.41802...; T = 1 keeps it readable
    err_w, err_l = _t([0.0]).requires_grad_(), _t([2.0])
    out = mapo_loss(err_w, err_l, beta=0.5, snr=0.5, scale=1.0)
    margin = 1 - 1 / (math.e - 1)
    assert out.loss.item() == pytest.approx(0.0 - 0.5 * math.log(1 / (1 + math.exp(-margin))), rel=1e-12)
    out.loss.backward()
    # d/de_w: 1 (the SFT term) - beta * (1 - sigmoid(margin)) * f'(0), f'(0) = -snr/2
    expected = 1 - 0.5 * (1 - 1 / (1 + math.exp(-margin))) * (-0.25)
    assert err_w.grad.item() == pytest.approx(expected, rel=1e-6)
    assert error_odds(_t([0.0, 1e-12]), 0.5).tolist() == pytest.approx([1.0, 1.0])


def test_dcpo_vector_is_diffusion_dpo_on_per_caption_errors():
    v = VECTORS["dcpo(beta=500)"]
    out = dcpo_loss(_t(v["mse_theta_w"]), _t(v["mse_theta_l"]), _t(v["mse_ref_w"]), _t(v["mse_ref_l"]), beta=500.0)
    assert out.loss.item() == pytest.approx(v["loss"], rel=1e-8)
    assert out.metrics["reward_margin"].item() == pytest.approx(sum(v["inside"]) / 2, abs=1e-12)


@pytest.mark.parametrize("form", ["sigmoid", "ipo", "hinge"])
def test_pair_loss_forms_by_hand(form):
    # logits 0.1 and -0.3 (see test_dpo.test_hand_computed_value), in float64
    mw, ml, rw, rl = _t([0.1000, 0.2003]), _t([0.2, 0.1]), _t([0.1001, 0.2]), _t([0.2, 0.1])
    expected = {
        "sigmoid": (math.log1p(math.exp(-0.1)) + math.log1p(math.exp(0.3))) / 2,
        "ipo": ((0.1 - 0.5) ** 2 + (-0.3 - 0.5) ** 2) / 2,  # 0.4
        "hinge": ((1 - 0.1) + (1 + 0.3)) / 2,  # 1.1
    }[form]
    out = dpo_loss(mw, ml, rw, rl, beta=2000.0, form=form)
    assert out.loss.item() == pytest.approx(expected, rel=1e-9)
    assert out.metrics["reward_margin"].item() == pytest.approx(-0.1, rel=1e-9)


def test_pair_loss_forms_at_initialisation_and_beyond_the_margin():
    zero = torch.zeros(3)
    assert PAIR_LOSSES["ipo"](zero).mean().item() == 0.25
    assert PAIR_LOSSES["hinge"](zero).mean().item() == 1.0
    logits = torch.tensor([0.5, 2.0], requires_grad=True)
    PAIR_LOSSES["hinge"](logits).sum().backward()
    assert logits.grad.tolist() == [-1.0, 0.0]  # a pair past the hinge's margin gives no gradient
    logits.grad = None
    PAIR_LOSSES["ipo"](logits).sum().backward()
    assert logits.grad.tolist() == [0.0, 3.0]  # IPO pulls a logit past 1/2 back: the margin is a target
    with pytest.raises(ValueError, match="unknown pair loss form 'square'"):
        dpo_loss(zero, zero, zero, zero, beta=1.0, form="square")  # type: ignore[arg-type]


def test_ipo_matches_the_diffusers_form_up_to_its_scale():
    mw, ml, rw, rl = _t([0.1000, 0.2003]), _t([0.2, 0.1]), _t([0.1001, 0.2]), _t([0.2, 0.1])
    beta = 5000.0
    ours = dpo_loss(mw, ml, rw, rl, beta=beta, form="ipo").loss.item()
    beta_prime = beta / 2  # diffusers' SD script: logits = ref_diff - model_diff, loss (logits - 1/(2 beta'))^2
    logits = (rw - rl) - (mw - ml)
    theirs = ((logits - 1 / (2 * beta_prime)) ** 2).mean().item()
    assert theirs == pytest.approx(ours * 4 / beta**2, rel=1e-9)
    hinge_theirs = torch.relu(1 - beta_prime * logits).mean().item()
    assert hinge_theirs == pytest.approx(dpo_loss(mw, ml, rw, rl, beta=beta, form="hinge").loss.item(), rel=1e-9)


def test_kto_by_hand():
    # beta 2000: rewards r = -1000 (e_θ - e_ref) = [0.2, -0.1, 0.3, -0.4]; mean 0 -> reference point 0
    model = _t([0.0998, 0.2001, 0.2997, 0.1004]).requires_grad_()
    ref = _t([0.1, 0.2, 0.3, 0.1])
    desirable = torch.tensor([True, True, False, False])
    out = kto_loss(model, ref, desirable, beta=2000.0, lambda_desirable=1.0, lambda_undesirable=2.0)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = ((1 - sig(0.2)) + (1 - sig(-0.1)) + 2 * (1 - sig(-0.3)) + 2 * (1 - sig(0.4))) / 4
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.metrics["kl"].item() == pytest.approx(0.0, abs=1e-9)
    assert out.metrics["implicit_acc"].item() == 0.5  # images 0 and 3 are on their label's side
    assert out.metrics["reward_desirable"].item() == pytest.approx(0.05, rel=1e-6)
    assert out.metrics["reward_undesirable"].item() == pytest.approx(-0.05, rel=1e-6)
    out.loss.backward()
    # d loss / d e_θ(0) = (1/4) * -sig'(0.2) * dr/de = (1/4) * -sig(.2)(1-sig(.2)) * -1000, the point held constant
    assert model.grad[0].item() == pytest.approx(250 * sig(0.2) * (1 - sig(0.2)), rel=1e-6)


def test_kto_reference_point_is_the_positive_mean_reward():
    model, ref = _t([0.0996, 0.1998]), _t([0.1, 0.2])  # rewards 0.4 and 0.2: point 0.3
    out = kto_loss(model, ref, torch.tensor([True, False]), beta=2000.0)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert out.metrics["kl"].item() == pytest.approx(0.3, rel=1e-6)
    assert out.loss.item() == pytest.approx(((1 - sig(0.1)) + (1 - sig(0.1))) / 2, rel=1e-6)
    assert out.metrics["reward_undesirable"].item() == pytest.approx(0.2, rel=1e-6)


def test_kto_at_initialisation_and_with_one_kind_only():
    err = torch.rand(5)
    out = kto_loss(err, err, torch.ones(5, dtype=torch.bool), beta=2000.0, lambda_desirable=1.0)
    assert out.loss.item() == pytest.approx(0.5)
    assert out.metrics["reward_undesirable"].item() == 0.0 and out.metrics["desirable_share"].item() == 1.0

"""InPO's reparametrised target and SmPO's smoothed label, against the hand-computed vectors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from diffalign.objectives.dpo import dpo_loss
from diffalign.objectives.inpo import inpo_loss, inversion_target
from diffalign.objectives.smpo import PAPER_BOUNDS, smoothed_label, smoothed_weight, smpo_loss

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "reference_vectors.json").read_text())


def test_tau_is_the_noise_when_the_latent_is_forward_noised():
    x0, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    alpha_bar = torch.tensor([0.99, 0.5, 0.02])
    a = alpha_bar.view(-1, 1, 1, 1)
    noised = a.sqrt() * x0 + (1 - a).sqrt() * eps
    assert torch.allclose(inversion_target(noised, x0, alpha_bar), eps, atol=1e-5)


@pytest.mark.parametrize("case", ["InPO_toy(t_s=250,n=10,eta_noise=off)", "SmPO_toy(t_s=250,n=5,renoise)"])
def test_tau_of_the_vectors_inverted_latents(case):
    vector = VECTORS["inversion"][case]
    x0 = torch.tensor([0.8, -0.4, 0.1, 1.5], dtype=torch.float64).view(1, 1, 2, 2)
    alpha_bar = torch.tensor([VECTORS["inversion"]["alphas_cumprod[[0,1,101,201,250,301]]"][4]], dtype=torch.float64)
    inverted = torch.tensor(vector["x_inv"], dtype=torch.float64).view(1, 1, 2, 2)
    tau = inversion_target(inverted, x0, alpha_bar)
    assert tau.flatten().tolist() == pytest.approx(vector["tau"], abs=1e-6)


def test_inpo_loss_is_diffusion_dpo_on_its_errors():
    errors = torch.tensor([0.10, 0.30, 0.12, 0.28])
    assert inpo_loss(*errors.split(1), beta=2000.0).loss.item() == dpo_loss(*errors.split(1), beta=2000.0).loss.item()


@pytest.mark.parametrize("case", ["ps_w=0.23,ps_l=0.21", "ps_w=0.26,ps_l=0.16", "ps_w=0.22,ps_l=0.22"])
def test_smoothed_label_weight_and_loss_match_the_vectors(case):
    vector = VECTORS["smpo"][case]
    w, l_ = (float(part.split("=")[1]) for part in case.split(","))
    score_w, score_l = torch.tensor([w], dtype=torch.float64), torch.tensor([l_], dtype=torch.float64)
    assert smoothed_label(score_w, score_l, *PAPER_BOUNDS).item() == pytest.approx(vector["p"], abs=1e-9)
    weight = smoothed_weight(score_w, score_l, *PAPER_BOUNDS)
    assert weight.item() == pytest.approx(vector["weight"], abs=1e-8)
    # the vectors' pair 0 of the Diffusion-DPO errors: inside = -0.5 * beta * weight * margin
    margin = vector["inside(pair0)"][0] / (-0.5 * 2000.0 * vector["weight"]) if vector["weight"] else 0.0
    errors = torch.tensor([margin, 0.0, 0.0, 0.0], dtype=torch.float64)
    out = smpo_loss(*errors.split(1), beta=2000.0, weight=weight)
    assert out.loss.item() == pytest.approx(vector["loss(pair0)"], abs=1e-8)


def test_equal_scores_give_zero_weight_and_no_gradient():
    weight = smoothed_weight(torch.tensor([0.7, 21.3]), torch.tensor([0.7, 21.3]), 0.0, 1.0)
    assert weight.tolist() == [0.0, 0.0]
    errors = torch.tensor([0.1, 0.3, 0.2, 0.2], requires_grad=True)
    out = smpo_loss(errors[:1], errors[1:2], errors[2:3], errors[3:], beta=2000.0, weight=weight[:1])
    out.loss.backward()
    assert out.loss.item() == pytest.approx(math.log(2)) and errors.grad[:2].abs().sum() == 0


def test_bounds_must_be_ordered():
    with pytest.raises(ValueError, match="high > low"):
        smoothed_label(torch.zeros(1), torch.zeros(1), 0.3, 0.3)

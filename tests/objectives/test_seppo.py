"""SePPO's anchor-based criterion and loss against the reconstruction's vectors and hand-made errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from diffalign.objectives import anchor_sign, dpo_loss, seppo_loss

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "reference_vectors.json").read_text())[
    "seppo_RECONSTRUCTED(beta=2000)"]


def _errors(delta_w: float, delta_r: float, ref_w: float = 0.02, ref_r: float = 0.03):
    """Errors (model_w, model_r, ref_w, ref_r) with the given Δ_w and Δ_r; the model's with gradient."""
    model = torch.tensor([ref_w + delta_w, ref_r + delta_r], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([ref_w, ref_r], dtype=torch.float64)
    return model, ref


@pytest.mark.parametrize("case", ["policy_better_on_anchor", "policy_worse_on_anchor"])
def test_the_reconstruction_vectors(case):
    vector = VECTORS[case]
    model, ref = _errors(vector["delta_w"][0], vector["delta_r"][0])
    out = seppo_loss(model[:1], model[1:], ref[:1], ref[1:], beta=2000.0)
    assert anchor_sign(model[:1], ref[:1]).item() == vector["flip"][0]
    assert out.metrics["reward_margin"].item() == pytest.approx(vector["inside"][0], rel=1e-9)
    assert out.loss.item() == pytest.approx(vector["loss"], rel=1e-8)


def test_sign_logic_on_hand_made_errors_including_ties():
    model_w = torch.tensor([0.10, 0.30, 0.20, 0.20], dtype=torch.float64)
    ref_w = torch.tensor([0.20, 0.20, 0.20, 0.20 + 1e-9], dtype=torch.float64)
    # policy better, reference better, an exact tie, the policy better by a hair
    assert anchor_sign(model_w, ref_w, "sign").tolist() == [1.0, -1.0, -1.0, 1.0]
    assert anchor_sign(model_w, ref_w, "indicator").tolist() == [1.0, 0.0, 0.0, 1.0]
    assert anchor_sign(model_w, ref_w, "always_loser").tolist() == [1.0, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="criterion 'flip'"):
        anchor_sign(model_w, ref_w, "flip")  # type: ignore[arg-type]


def test_at_step_zero_every_anchor_ties_and_the_loss_is_sft_on_both_images():
    """Policy = reference: the loss is ln 2 and its gradient lowers both errors (the sample is a winner)."""
    errors = torch.tensor([0.4, 0.7], dtype=torch.float64, requires_grad=True)
    out = seppo_loss(errors[:1], errors[1:], errors[:1].detach(), errors[1:].detach(), beta=10.0)
    assert out.loss.item() == pytest.approx(math.log(2))
    assert out.metrics["sample_as_winner"].item() == 1.0
    out.loss.backward()
    assert errors.grad.tolist() == pytest.approx([2.5, 2.5])  # 0.5 * beta * sigma(0): both pushed down alike


def test_policy_ahead_on_the_anchor_is_exactly_diffusion_dpo_with_the_sample_as_loser():
    model, ref = _errors(-0.001, 0.002)
    out = seppo_loss(model[:1], model[1:], ref[:1], ref[1:], beta=500.0)
    dpo = dpo_loss(model[:1], model[1:], ref[:1], ref[1:], beta=500.0)
    assert out.loss.item() == pytest.approx(dpo.loss.item(), rel=1e-12)
    (grad,) = torch.autograd.grad(out.loss, model)
    assert grad[0] > 0 and grad[1] < 0  # the anchor's error is lowered, the sample's raised
    assert out.metrics["sample_as_winner"].item() == 0.0


def test_reference_ahead_flips_the_sample_into_a_second_winner_or_drops_it():
    model, ref = _errors(0.001, 0.002)
    flipped = seppo_loss(model[:1], model[1:], ref[:1], ref[1:], beta=500.0)
    (grad,) = torch.autograd.grad(flipped.loss, model)
    assert grad[0] > 0 and grad[1] > 0  # both errors lowered: SFT-like
    model, ref = _errors(0.001, 0.002)
    dropped = seppo_loss(model[:1], model[1:], ref[:1], ref[1:], beta=500.0, criterion="indicator")
    (grad,) = torch.autograd.grad(dropped.loss, model)
    assert grad[0] > 0 and grad[1] == 0.0
    expected = -torch.nn.functional.logsigmoid(torch.tensor(-0.5 * 500.0 * 0.001, dtype=torch.float64))
    assert dropped.loss.item() == pytest.approx(expected.item(), rel=1e-12)
    model, ref = _errors(0.001, 0.002)
    always = seppo_loss(model[:1], model[1:], ref[:1], ref[1:], beta=500.0, criterion="always_loser")
    dpo = dpo_loss(model[:1], model[1:], ref[:1], ref[1:], beta=500.0)
    assert always.loss.item() == pytest.approx(dpo.loss.item(), rel=1e-12)


def test_weight_scales_each_logit():
    model, ref = _errors(-0.001, 0.002)
    plain = seppo_loss(model[:1], model[1:], ref[:1], ref[1:], beta=500.0)
    weighted = seppo_loss(model[:1], model[1:], ref[:1], ref[1:], beta=500.0, weight=torch.tensor([2.0]))
    assert weighted.metrics["reward_margin"].item() == pytest.approx(2 * plain.metrics["reward_margin"].item())

"""The Diffusion-DPO method: winner and loser share noise and timestep, and the loss is the official and
the diffusers research script's formula on the same tensors (hand-computed vectors, tests/reference_vectors.json)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from diffalign.config.objectives import DPOConfig
from diffalign.data.record import PairBatch, Side
from diffalign.models.conditioning import TextConditioning
from diffalign.training.methods.base import TrainableModel
from diffalign.training.methods.dpo import DPO

VECTORS = Path(__file__).resolve().parents[2] / "reference_vectors.json"
# the vectors' toy tensors (vectors.py): shared noise per pair and the predictions' offsets from it
EPS = torch.tensor([[[[0.5, -1.0], [0.25, 2.0]]], [[[-0.3, 0.7], [1.2, -0.4]]]], dtype=torch.float64)
D_THETA_W = 0.1 * torch.tensor([[[[0.10, -0.20], [0.05, 0.00]]], [[[0.30, 0.10], [-0.20, 0.20]]]], dtype=torch.float64)
D_REF_W = 0.1 * torch.tensor([[[[0.20, -0.10], [0.10, 0.10]]], [[[0.10, 0.10], [-0.10, 0.10]]]], dtype=torch.float64)
D_THETA_L = 0.1 * torch.tensor([[[[0.30, 0.10], [-0.20, 0.20]]], [[[0.10, -0.20], [0.05, 0.00]]]], dtype=torch.float64)
D_REF_L = 0.1 * torch.tensor([[[[0.10, 0.10], [-0.10, 0.10]]], [[[0.20, -0.10], [0.10, 0.10]]]], dtype=torch.float64)


class FixedUNet(torch.nn.Module):
    """Returns fixed predictions (winners' rows, then losers') and records what it was called with."""

    def __init__(self, prediction: torch.Tensor) -> None:
        super().__init__()
        self.prediction = torch.nn.Parameter(prediction.clone())
        self.calls: list[tuple[torch.Tensor, torch.Tensor, dict]] = []

    def forward(self, sample, timestep, **kwargs):
        self.calls.append((sample.detach().clone(), timestep.clone(), kwargs))
        return SimpleNamespace(sample=self.prediction)


class FixedReference:
    def __init__(self, prediction: torch.Tensor) -> None:
        self.unet = FixedUNet(prediction)

    def predict(self, sample, timestep, **kwargs):
        return self.unet(sample, timestep, **kwargs).sample.detach()


class ToyRandom:
    """The draws the method makes: the vectors' noise, and timesteps 500 and 700."""

    def randn(self, *shape):
        assert shape == tuple(EPS.shape[1:])
        return EPS.clone()

    def randint(self, high):
        return torch.tensor([500, 700])


def _batch(generator: torch.Generator) -> PairBatch:
    cond = TextConditioning(torch.randn(2, 3, 4, generator=generator, dtype=torch.float64))
    latents_w = torch.randn(2, 1, 2, 2, generator=generator, dtype=torch.float64)
    latents_l = torch.randn(2, 1, 2, 2, generator=generator, dtype=torch.float64)
    return PairBatch(["a", "b"], Side(["a", "b"], latents=latents_w, cond=cond),
                     Side(["a", "b"], latents=latents_l, cond=cond))


def _run(beta: float):
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    policy = FixedUNet(torch.cat([EPS + D_THETA_W, EPS + D_THETA_L]))
    reference = FixedReference(torch.cat([EPS + D_REF_W, EPS + D_REF_L]))
    batch = _batch(torch.Generator().manual_seed(0))
    out = DPO(DPOConfig(beta=beta))(TrainableModel(policy, reference, scheduler, "epsilon"), batch, ToyRandom())
    return out, policy, reference, batch, scheduler


@pytest.mark.parametrize("beta", [1, 100, 2000, 5000])
def test_loss_matches_the_hand_computed_vectors(beta):
    expected = json.loads(VECTORS.read_text())["diffusion_dpo"][f"beta={beta}"]
    out, policy, *_ = _run(float(beta))
    assert out.loss.item() == pytest.approx(expected["loss"], rel=2e-6)  # errors are float32
    assert out.metrics["implicit_acc"].item() == expected["implicit_acc_diffusers"]
    out.loss.backward()
    grad_w = policy.prediction.grad[0].flatten()  # d loss / d prediction of pair 0's winner
    torch.testing.assert_close(grad_w, torch.tensor(expected["grad_wrt_pred_theta_w(pair0)"], dtype=torch.float64),
                               rtol=1e-5, atol=1e-8)


def test_winner_and_loser_share_noise_and_timestep_and_caption():
    _, policy, reference, batch, scheduler = _run(2000.0)
    (sample, t, kwargs), = policy.calls
    assert torch.equal(t[:2], t[2:]) and t.tolist() == [500, 700, 500, 700]
    abar = scheduler.alphas_cumprod[t].double()[:, None, None, None]
    x0 = torch.cat([batch.w.latents, batch.l.latents])
    noise = (sample - abar.sqrt() * x0) / (1 - abar).sqrt()
    torch.testing.assert_close(noise[:2], EPS)
    torch.testing.assert_close(noise[2:], EPS)
    hidden = kwargs["encoder_hidden_states"]
    assert torch.equal(hidden[:2], hidden[2:])
    (ref_sample, ref_t, _), = reference.unet.calls
    assert torch.equal(ref_sample, sample) and torch.equal(ref_t, t)


def test_loss_equals_the_diffusers_research_script_formula():
    """diffusers' train_diffusion_dpo.py: mse per sample, chunk(2), -logsigmoid(-0.5*beta*(model_diff-ref_diff))."""
    beta = 2000.0
    out, policy, reference, *_ = _run(beta)
    target = torch.cat([EPS, EPS]).float()
    model_losses = F.mse_loss(policy.prediction.detach().float(), target, reduction="none").mean(dim=[1, 2, 3])
    ref_losses = F.mse_loss(reference.unet.prediction.detach().float(), target, reduction="none").mean(dim=[1, 2, 3])
    model_w, model_l = model_losses.chunk(2)
    ref_w, ref_l = ref_losses.chunk(2)
    inside = -0.5 * beta * ((model_w - model_l) - (ref_w - ref_l))
    assert out.loss.item() == pytest.approx((-F.logsigmoid(inside).mean()).item(), rel=1e-6)


def test_winners_only_data_is_refused_clearly():
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    batch = _batch(torch.Generator().manual_seed(0))
    batch.l = None
    model = TrainableModel(FixedUNet(torch.zeros(4, 1, 2, 2)), None, scheduler, "epsilon")
    with pytest.raises(ValueError, match="winners only"):
        DPO(DPOConfig())(model, batch, ToyRandom())

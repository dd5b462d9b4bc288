import pytest
import torch
import torch.nn.functional as F

from diffalign.objectives import sft_loss


def test_sft_equals_mse():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    out = sft_loss(pred, target)
    assert out.loss.item() == pytest.approx(F.mse_loss(pred, target).item(), rel=1e-6)
    assert out.metrics["model_err_w"].item() == pytest.approx(out.loss.item())

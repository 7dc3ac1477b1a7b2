import math

import pytest
import torch

from libra_d2.modeling.losses import balanced_l1_loss

B = math.exp(3.0) - 1.0  # b for alpha 0.5, gamma 1.5


def loss_at(x, **kw):
    return float(balanced_l1_loss(torch.tensor([x], dtype=torch.float64), torch.zeros(1, dtype=torch.float64), **kw))


def test_closed_form_values():
    assert loss_at(0.0) == pytest.approx(0.0, abs=1e-12)
    # at x = beta = 1 both pieces equal 1 + gamma / b
    assert loss_at(1.0) == pytest.approx(1.0 + 1.5 / B, rel=1e-9)
    assert loss_at(3.0) == pytest.approx(4.5 + 1.5 / B - 0.5, rel=1e-9)
    x = 0.25
    assert loss_at(x) == pytest.approx(0.5 / B * (B * x + 1) * math.log(B * x + 1) - 0.5 * x, rel=1e-9)
    assert loss_at(-0.25) == pytest.approx(loss_at(0.25))  # |input - target|


@pytest.mark.parametrize("beta", [1.0, 0.11, 2.0])
def test_continuous_at_beta(beta):
    eps = 1e-9
    assert loss_at(beta - eps, beta=beta) == pytest.approx(loss_at(beta + eps, beta=beta), abs=1e-6)


def test_gradient():
    x = torch.tensor([0.1, 0.5, 0.9, 1.5, 4.0], dtype=torch.float64, requires_grad=True)
    balanced_l1_loss(x, torch.zeros_like(x), reduction="sum").backward()
    expected = [0.5 * math.log(B * v + 1) for v in (0.1, 0.5, 0.9)] + [1.5, 1.5]
    assert x.grad.tolist() == pytest.approx(expected, rel=1e-9)
    # the gradient is continuous at beta = 1: alpha * ln(b + 1) = gamma
    assert 0.5 * math.log(B + 1) == pytest.approx(1.5)


def test_inliers_get_more_gradient_than_smooth_l1():
    x = torch.tensor([0.05], requires_grad=True)
    balanced_l1_loss(x, torch.zeros(1)).sum().backward()
    assert float(x.grad) > 0.05  # smooth L1 (beta 1) gradient there is x = 0.05


def test_reductions_and_empty():
    a, t = torch.randn(4, 4), torch.randn(4, 4)
    none = balanced_l1_loss(a, t)
    assert none.shape == (4, 4)
    assert torch.allclose(balanced_l1_loss(a, t, reduction="sum"), none.sum())
    assert torch.allclose(balanced_l1_loss(a, t, reduction="mean"), none.mean())
    e = torch.zeros(0, 4, requires_grad=True)
    assert float(balanced_l1_loss(e, e.detach(), reduction="mean")) == 0.0
    assert float(balanced_l1_loss(e, e.detach(), reduction="sum")) == 0.0
    with pytest.raises(ValueError, match="reduction"):
        balanced_l1_loss(a, t, reduction="max")
    with pytest.raises(ValueError, match="beta"):
        balanced_l1_loss(a, t, beta=0)


def test_float32_under_half_inputs():
    a = torch.randn(8).half()
    out = balanced_l1_loss(a, torch.zeros(8).half())
    assert out.dtype == torch.float32

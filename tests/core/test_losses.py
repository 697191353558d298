import math

import pytest
import torch
import torch.nn.functional as F

from kdsweep.core.losses import cosine_hidden_loss, distillation_loss, kd_kl


def hand_kl(t_logits, s_logits, T):
    """KL(softmax(t/T) || softmax(s/T)) for one row, written out."""
    zt = [math.exp(x / T) for x in t_logits]
    zs = [math.exp(x / T) for x in s_logits]
    pt = [z / sum(zt) for z in zt]
    ps = [z / sum(zs) for z in zs]
    return sum(p * math.log(p / q) for p, q in zip(pt, ps, strict=True))


def test_kd_term_matches_hand_computation_with_t_squared_scaling():
    t = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    s = torch.tensor([[1.0, 1.0, 0.0], [0.5, -0.5, 1.0]])
    for T in (1.0, 2.0, 4.0):
        expected = T**2 * (hand_kl(t[0].tolist(), s[0].tolist(), T) + hand_kl(t[1].tolist(), s[1].tolist(), T)) / 2
        assert kd_kl(s, t, T).item() == pytest.approx(expected, rel=1e-5)
    # Worked by hand: p_t = softmax([1, .25, -.5]) = [.5898, .2786, .1316],
    # p_s = softmax([.5, .5, 0]) = [.3837, .3837, .2327]; KL = .08949; T^2 * KL = .35797.
    assert kd_kl(s[:1], t[:1], 2.0).item() == pytest.approx(0.357969, abs=1e-5)


def test_alpha_one_is_pure_kd_and_alpha_zero_is_pure_ce():
    torch.manual_seed(0)
    s, t = torch.randn(5, 3), torch.randn(5, 3)
    y = torch.tensor([0, 1, 2, 1, 0])
    kd_only, parts = distillation_loss(s, t, y, alpha=1.0, temperature=3.0)
    assert kd_only.shape == (5,)  # per example: the trainer sums and divides by the global batch
    assert kd_only.mean().item() == pytest.approx(kd_kl(s, t, 3.0).item())
    assert "ce" not in parts
    ce_only, parts = distillation_loss(s, t, y, alpha=0.0, temperature=3.0)
    torch.testing.assert_close(ce_only, F.cross_entropy(s, y, reduction="none"))
    assert "kd" not in parts
    mixed, _ = distillation_loss(s, t, y, alpha=0.3, temperature=3.0)
    assert mixed.mean().item() == pytest.approx(
        0.3 * kd_kl(s, t, 3.0).item() + 0.7 * F.cross_entropy(s, y).item(), rel=1e-6
    )


def test_identical_logits_give_zero_kd():
    x = torch.randn(4, 7)
    assert kd_kl(x, x.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_no_gradient_reaches_the_teacher():
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    loss, _ = distillation_loss(s, t, torch.tensor([0, 1, 2, 0]), alpha=0.5, temperature=2.0)
    loss.sum().backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_kd_needs_teacher_logits():
    with pytest.raises(ValueError, match="teacher logits"):
        distillation_loss(torch.randn(2, 3), None, torch.tensor([0, 1]), alpha=0.5, temperature=1.0)


def test_cosine_loss_ignores_padding_and_detaches_teacher():
    s = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]], requires_grad=True)
    t = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [-5.0, 5.0]]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0]])  # third position is padding
    loss = cosine_hidden_loss(s, t, mask)
    assert loss.item() == pytest.approx(((1 - 1.0) + (1 - 0.0)) / 2)
    loss.sum().backward()
    assert t.grad is None
    with pytest.raises(ValueError, match="equal hidden sizes"):
        cosine_hidden_loss(torch.randn(1, 2, 4), torch.randn(1, 2, 3), torch.ones(1, 2))

"""The loss terms of AGKD-BML, on real tensors."""

from __future__ import annotations

import pytest
import torch

from agkd_bml.attacks import most_confusing_class
from agkd_bml.methods.losses import (
    angular_distance,
    attention_map,
    mart_loss,
    smooth_targets,
    triplet_loss,
)


def test_attention_map_shape_and_range():
    feats = torch.randn(5, 16, 4, 4).relu()
    a = attention_map(feats)
    assert a.shape == (5, 16)
    assert torch.all(a >= 0) and torch.all(a <= 1)
    assert torch.allclose(a.amin(1), torch.zeros(5))
    assert torch.allclose(a.amax(1), torch.ones(5), atol=1e-6)


def test_attention_map_sum_equals_mean_after_normalising_and_constant_map_is_finite():
    feats = torch.rand(3, 8, 5, 5)
    assert torch.allclose(attention_map(feats), attention_map(feats / 8.0), atol=1e-6)
    assert torch.isfinite(attention_map(torch.ones(2, 4, 3, 3))).all()


def test_angular_distance_parallel_antiparallel_orthogonal():
    a = torch.tensor([[1.0, 2.0, 3.0]] * 3)
    b = torch.tensor([[2.0, 4.0, 6.0], [-1.0, -2.0, -3.0], [3.0, 0.0, -1.0]])
    d = angular_distance(a, b)
    assert torch.allclose(d, torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)


def test_triplet_zero_when_margin_met_positive_otherwise_and_gradient_reaches_all():
    a = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[1.0, 0.01]])
    n = torch.tensor([[0.0, 1.0]])
    assert triplet_loss(a, p, n, margin=0.03).item() == 0.0
    a2, p2, n2 = (torch.randn(4, 8, requires_grad=True) for _ in range(3))
    bad = triplet_loss(a2, n2, p2 * 0 + a2.detach(), margin=0.03)  # negative == anchor: margin violated
    assert bad.item() > 0
    a3, p3, n3 = (torch.randn(6, 8, requires_grad=True) for _ in range(3))
    loss = triplet_loss(a3, p3, n3, margin=2.0)  # margin 2 can never be met: all rows active
    loss.backward()
    for t in (a3, p3, n3):
        assert t.grad is not None and t.grad.abs().sum() > 0


def test_most_confusing_class_is_highest_other_logit_never_label():
    torch.manual_seed(0)
    logits = torch.randn(200, 10)
    labels = logits.argmax(1)  # the worst case: the label holds the top logit
    y_mc = most_confusing_class(logits, labels)
    assert torch.all(y_mc != labels)
    expected = logits.topk(2, 1).indices[:, 1]
    assert torch.equal(y_mc, expected)
    random_labels = torch.randint(0, 10, (200,))
    y2 = most_confusing_class(logits, random_labels)
    assert torch.all(y2 != random_labels)
    masked = logits.scatter(1, random_labels[:, None], float("-inf"))
    assert torch.equal(logits.gather(1, y2[:, None]).squeeze(1), masked.amax(1))


def test_label_smoothing_feature_scattering_convention():
    q = smooth_targets(torch.tensor([2, 0]), 10, 0.5)
    assert torch.allclose(q[0, 2], torch.tensor(0.5)) and torch.allclose(q[1, 0], torch.tensor(0.5))
    others = q[0][torch.arange(10) != 2]
    assert torch.allclose(others, torch.full((9,), 0.5 / 9))
    assert torch.allclose(q.sum(1), torch.ones(2))


def test_mart_loss_equals_its_definition_term_by_term():
    """MART (Wang et al. 2020): mean over images of -log(1 - p_adv[best wrong
    class]) plus beta times the KL from
    the clean to the adversarial distribution weighted by 1 - p_clean[y]; written out here image by image."""
    import math

    torch.manual_seed(0)
    clean, adv = torch.randn(8, 10, dtype=torch.float64), torch.randn(8, 10, dtype=torch.float64)
    y = torch.randint(0, 10, (8,))
    bce, kl = [], []
    for i in range(8):
        p_adv, p_clean = adv[i].softmax(0).tolist(), clean[i].softmax(0).tolist()
        wrong = max((k for k in range(10) if k != int(y[i])), key=lambda k: p_adv[k])
        bce.append(-math.log(1 - p_adv[wrong]))
        kl.append(sum(c * math.log(c / a) for c, a in zip(p_clean, p_adv,
                                                          strict=True)) * (1 - p_clean[int(y[i])]))
    for beta in (0.0, 6.0):
        want = sum(bce) / 8 + beta * sum(kl) / 8
        assert float(mart_loss(clean, adv, y, beta=beta)) == pytest.approx(want, rel=1e-3)
    # the same distributions clean and attacked: no KL term, only the boosted BCE
    assert float(mart_loss(adv, adv, y, beta=6.0)) == pytest.approx(sum(bce) / 8, rel=1e-3)

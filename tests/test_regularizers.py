import io
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from sktransfer import FineTunedClassifier
from sktransfer.training.heads import BackboneWithHead, make_head
from sktransfer.regularizers import L2SP


def model():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))
    return BackboneWithHead(backbone, make_head(3, 2))


def test_penalty_is_half_alpha_times_the_sum_of_squared_distances():
    net = model()
    penalty = L2SP(0.3, backbone=net.backbone)
    start = [p.detach().clone() for p in net.backbone.parameters()]
    assert penalty(net).item() == pytest.approx(
        0.15 * sum((p ** 2).sum().item() for p in net.head.parameters()), rel=1e-6)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    transferred = sum(((p - s) ** 2).sum().item()
                      for p, s in zip(net.backbone.parameters(), start))
    head = sum((p ** 2).sum().item() for p in net.head.parameters())
    assert penalty(net).item() == pytest.approx(0.3 / 2 * (transferred + head), rel=1e-6)


def test_gradient_pulls_towards_the_reference():
    net = model()
    penalty = L2SP(2.0, backbone=net.backbone)
    weight = net.backbone[0].weight
    with torch.no_grad():
        weight.add_(1.0)
    penalty(net).backward()
    # d/dw alpha/2 (w - w0)^2 = alpha (w - w0) = 2 * 1
    torch.testing.assert_close(weight.grad, torch.full_like(weight, 2.0))


def test_frozen_parameters_are_skipped():
    net = model()
    penalty = L2SP(1.0, backbone=net.backbone)
    with torch.no_grad():
        net.backbone[0].weight.add_(1.0)
    net.backbone[0].weight.requires_grad_(False)
    head = sum((p ** 2).sum().item() for p in net.head.parameters())
    assert penalty(net).item() == pytest.approx(head / 2, rel=1e-6)


def test_references_are_buffers_that_pickle_and_move():
    net = model()
    penalty = L2SP(1.0, backbone=net.backbone)
    assert len(list(penalty.buffers())) == len(list(net.backbone.parameters()))
    assert not list(penalty.parameters())  # nothing for an optimizer to train
    restored = pickle.loads(pickle.dumps(penalty))
    for a, b in zip(restored.references(), penalty.references()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    buffer = io.BytesIO()
    torch.save(penalty.state_dict(), buffer)
    assert len(buffer.getvalue()) > 4 * sum(p.numel() for p in net.backbone.parameters())
    assert penalty.to(torch.float64).references()[0].dtype == torch.float64


def test_estimator_trains_with_the_penalty_and_keeps_it(digits):
    images, labels = digits
    X = (images[:200].reshape(200, -1) / 255.0).astype(np.float32)
    y = labels[:200]
    body = nn.Sequential(nn.Linear(64, 16), nn.ReLU())
    clf = FineTunedClassifier(body, l2sp=0.5, lr=0.05, max_epochs=2, random_state=0).fit(X, y)
    assert isinstance(clf.l2sp_, L2SP) and clf.l2sp_.alpha == 0.5
    torch.testing.assert_close(clf.l2sp_.references()[0], body[0].weight.detach(), rtol=0,
                               atol=0)
    plain = FineTunedClassifier(body, lr=0.05, max_epochs=2, random_state=0).fit(X, y)
    assert plain.l2sp_ is None
    # The penalty holds the backbone near its starting point; without it the
    # same training moves it freely.
    def moved(est):
        return sum(((p - r) ** 2).sum().item() for p, r in
                   zip(est.backbone_.module.parameters(), clf.l2sp_.references()))
    assert moved(clf) < 0.5 * moved(plain)
    restored = pickle.loads(pickle.dumps(clf))
    restored.partial_fit(X, y)
    assert len(restored.history_) == 3

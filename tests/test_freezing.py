import copy

import numpy as np
import pytest
import torch
from torch import nn

from sktransfer import FineTunedClassifier
from sktransfer.backbones import ordered_param_groups
from sktransfer.training.freezing import check_freeze, freeze_groups, n_frozen_groups
from sktransfer.training.heads import BackboneWithHead, make_head


def body():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(),
                         nn.Linear(32, 16), nn.BatchNorm1d(16, affine=False), nn.ReLU(),
                         nn.Linear(16, 8), nn.ReLU())


@pytest.fixture(scope="module")
def flat_digits(digits):
    images, labels = digits
    return (images[:300].reshape(300, -1) / 255.0).astype(np.float32), labels[:300]


def changed(before, after):
    return {key for key in before if not torch.equal(before[key], after[key])}


def test_modes_and_counts():
    groups = ordered_param_groups(body())
    assert [name for name, _ in groups] == ["0", "1", "3", "6"]
    assert n_frozen_groups("none", groups) == 0
    assert n_frozen_groups("backbone", groups) == 4
    assert n_frozen_groups(2, groups) == 2
    with pytest.raises(ValueError, match=r"freeze=5 is larger .* \(4: \['0', '1', '3', '6'\]\)"):
        n_frozen_groups(5, groups)
    for bad in ("all", -1, 1.5, True, None):
        with pytest.raises(ValueError, match="freeze must be"):
            check_freeze(bad)


def test_frozen_groups_get_no_gradient_and_their_batchnorm_stays_in_eval():
    backbone = body()
    model = BackboneWithHead(backbone, make_head(8, 3))
    groups = ordered_param_groups(backbone)
    freeze_groups(model, groups, 2)  # the first Linear and the affine BatchNorm
    assert [p.requires_grad for p in backbone.parameters()] == [False] * 4 + [True] * 4
    model.train()
    assert not backbone[1].training  # frozen BatchNorm: running statistics kept
    assert backbone[4].training  # in a group that trains
    assert model.head.training
    freeze_groups(model, groups, 4)
    model.train()
    assert not backbone[4].training  # no affine parameters: follows its group
    freeze_groups(model, groups, 0)
    model.train()
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("freeze, moved", [
    ("backbone", set()),
    (2, {"3.weight", "3.bias", "4.running_mean", "4.running_var", "4.num_batches_tracked",
         "6.weight", "6.bias"}),
])
def test_fit_leaves_frozen_parameters_and_statistics_unchanged(flat_digits, freeze, moved):
    X, y = flat_digits
    start = copy.deepcopy(body().state_dict())
    clf = FineTunedClassifier(body, freeze=freeze, lr=0.01, max_epochs=2, random_state=0)
    clf.fit(X, y)
    assert changed(start, clf.backbone_.module.state_dict()) == moved
    assert clf.history_[-1, "train_loss"] < clf.history_[0, "train_loss"]  # the head learns


def test_freeze_epochs_train_the_head_first_then_unfreeze(flat_digits):
    X, y = flat_digits
    start = copy.deepcopy(body().state_dict())
    head_only = FineTunedClassifier(body, freeze_epochs=2, max_epochs=2, random_state=0)
    head_only.fit(X, y)
    assert changed(start, head_only.backbone_.module.state_dict()) == set()
    # partial_fit continues the epoch count: epoch 3 trains everything
    head_only.partial_fit(X, y)
    assert changed(start, head_only.backbone_.module.state_dict()) == set(start)

    lp_ft = FineTunedClassifier(body, freeze_epochs=1, freeze=2, max_epochs=3,
                                random_state=0).fit(X, y)
    assert changed(start, lp_ft.backbone_.module.state_dict()) == {
        "3.weight", "3.bias", "4.running_mean", "4.running_var", "4.num_batches_tracked",
        "6.weight", "6.bias"}


def test_fitted_backbone_is_trainable_again(flat_digits):
    X, y = flat_digits
    clf = FineTunedClassifier(body, freeze="backbone", max_epochs=1).fit(X, y)
    assert all(p.requires_grad for p in clf.backbone_.module.parameters())
    assert not clf.backbone_.module.training

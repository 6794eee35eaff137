"""Evidence that parameter transfer works, on real digits.

Source task: the digit modulo 5 (0 and 5 share a label, 1 and 6, ...) on one
half of ``load_digits``. Target task: the ten digits on the other half, with
one labelled image per class. A small CNN is pretrained on the source, then
fine-tuned on the target, and compared with the same network trained from
scratch under the same seeds and budget.
"""

import copy

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback
from torch import nn

from sktransfer import FineTunedClassifier


def cnn():
    """A small CNN over the 64 flattened pixels, reshaped inside."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(512, 64), nn.ReLU(),
    )


TARGET = dict(lr=3e-3, max_epochs=10, batch_size=8)


@pytest.fixture(scope="module")
def tasks():
    from sklearn.datasets import load_digits

    digits = load_digits()
    X, y = (digits.data / 16).astype(np.float32), digits.target
    order = np.random.RandomState(0).permutation(len(y))
    source, target = order[:900], order[900:]
    return X, y, source, target


@pytest.fixture(scope="module")
def source_model(tasks):
    X, y, source, _ = tasks
    return FineTunedClassifier(cnn, lr=3e-3, max_epochs=10, batch_size=64,
                               random_state=0).fit(X[source], y[source] % 5)


def few_labels(y, pool, per_class, seed):
    rng = np.random.RandomState(seed)
    return np.concatenate([rng.choice(pool[y[pool] == c], per_class, replace=False)
                           for c in np.unique(y[pool])])


def distance(model, reference):
    """Squared L2 distance of the backbone's parameters from ``reference``'s."""
    ref = dict(reference.backbone_.module.named_parameters())
    return sum(((p - ref[name]) ** 2).sum().item()
               for name, p in model.backbone_.module.named_parameters())


def test_source_task_is_learned(tasks, source_model):
    X, y, _, target = tasks
    assert source_model.score(X[target], y[target] % 5) > 0.9


@pytest.mark.parametrize("seed", [0, 1])
def test_starting_from_the_source_beats_training_from_scratch(tasks, source_model, seed):
    X, y, _, target = tasks
    train = few_labels(y, target, 1, seed)
    test = np.setdiff1d(target, train)
    transferred = FineTunedClassifier(source_model, random_state=seed, **TARGET)
    scratch = FineTunedClassifier(cnn, weights=None, random_state=seed, **TARGET)
    transfer_acc = transferred.fit(X[train], y[train]).score(X[test], y[test])
    scratch_acc = scratch.fit(X[train], y[train]).score(X[test], y[test])
    # seen: 0.70 vs 0.29 (seed 0) and 0.59 vs 0.35 (seed 1)
    assert transfer_acc > scratch_acc + 0.15, (transfer_acc, scratch_acc)


class _StartWeights(Callback):
    """Keeps the network's weights as training begins."""

    def on_train_begin(self, net, **kwargs):
        self.state = copy.deepcopy(net.module_.state_dict())


def test_frozen_backbone_keeps_every_source_weight_while_the_head_moves(tasks, source_model):
    X, y, _, target = tasks
    train = few_labels(y, target, 5, 0)
    probe = FineTunedClassifier(source_model, freeze="backbone", callbacks=[_StartWeights()],
                                random_state=0, **TARGET).fit(X[train], y[train])
    source_state = source_model.backbone_.module.state_dict()
    final = probe.backbone_.module.state_dict()
    assert final.keys() == source_state.keys()
    for name, value in source_state.items():  # weights and BatchNorm statistics
        torch.testing.assert_close(final[name], value, rtol=0, atol=0, msg=name)
    start = dict(probe.net_.callbacks_)["_StartWeights"].state
    for name, value in probe.head_.state_dict().items():
        assert not torch.equal(value, start["head." + name]), name
    assert probe.score(X[target], y[target]) > 0.5


def test_l2sp_stays_closer_to_the_source_than_plain_finetuning(tasks, source_model):
    X, y, _, target = tasks
    train = few_labels(y, target, 5, 0)
    # No weight decay on either side, so the only difference is the penalty.
    params = dict(weight_decay=0.0, random_state=0, **TARGET)
    plain = FineTunedClassifier(source_model, **params).fit(X[train], y[train])
    l2sp = FineTunedClassifier(source_model, l2sp=0.1, **params).fit(X[train], y[train])
    assert len(plain.history_) == len(l2sp.history_) == TARGET["max_epochs"]
    # seen: 5.2 vs 10.1
    assert distance(l2sp, source_model) < 0.7 * distance(plain, source_model)
    assert distance(plain, source_model) > 1.0  # plain fine-tuning does move the weights
    # and the penalty does not cost the target task
    assert l2sp.score(X[target], y[target]) > plain.score(X[target], y[target]) - 0.05

"""gradient_accumulation_steps: k batches of n make the optimizer step of one batch of k * n."""

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback
from torch import nn

from sktransfer import FineTunedClassifier, FineTunedRegressor

BASE = dict(lr=0.05, max_epochs=3, random_state=0, schedule=None)


def mlp():
    # No BatchNorm: a forward pass over a batch of n is then the same per sample
    # as over a batch of k * n, and the equivalence is exact up to float rounding.
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU())


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    X = rng.rand(64, 4).astype(np.float32)
    y = (X[:, 0] > 0.5).astype(int) + (X[:, 1] > 0.5)
    return X, y, rng.rand(64)


class BatchSizes(Callback):
    """Records the size of every training batch that goes through the network."""

    def on_train_begin(self, net, **kwargs):
        self.sizes_ = []

    def on_batch_begin(self, net, batch=None, training=False, **kwargs):
        if training:
            self.sizes_.append(len(batch[0]))


@pytest.mark.parametrize("extra", [{}, {"class_weight": "balanced"}, {"l2sp": 0.1}],
                         ids=["plain", "class_weight", "l2sp"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
def test_k_batches_of_n_give_the_model_of_one_batch_of_k_n(data, extra, weighted):
    X, y, w = data
    sw = w if weighted else None
    big = FineTunedClassifier(mlp(), batch_size=64, **BASE, **extra).fit(X, y, sample_weight=sw)
    acc = FineTunedClassifier(mlp(), batch_size=16, gradient_accumulation_steps=4,
                              callbacks=[BatchSizes()], **BASE, **extra).fit(
        X, y, sample_weight=sw)
    # (the net trains with its own copy of the callback)
    sizes = next(cb for _, cb in acc.net_.callbacks_ if isinstance(cb, BatchSizes))
    np.testing.assert_allclose(acc.predict_proba(X), big.predict_proba(X), rtol=0, atol=1e-5)
    # each forward pass saw batch_size samples: accumulation is not a bigger batch
    assert sizes.sizes_ == [16] * 4 * BASE["max_epochs"]


def test_uneven_batches_and_the_regressor(data):
    X, y, _ = data
    # 64 samples in batches of 24: 24 + 24 + 16, one step per epoch
    big = FineTunedClassifier(mlp(), batch_size=64, **BASE).fit(X, y)
    acc = FineTunedClassifier(mlp(), batch_size=24, gradient_accumulation_steps=3,
                              **BASE).fit(X, y)
    np.testing.assert_allclose(acc.predict_proba(X), big.predict_proba(X), rtol=0, atol=1e-5)
    targets = X[:, :2] * 3
    big = FineTunedRegressor(mlp(), batch_size=64, **BASE).fit(X, targets)
    acc = FineTunedRegressor(mlp(), batch_size=8, gradient_accumulation_steps=8,
                             **BASE).fit(X, targets)
    np.testing.assert_allclose(acc.predict(X), big.predict(X), rtol=0, atol=1e-5)


def test_the_schedule_counts_optimizer_steps(data):
    X, y, _ = data
    # 4 batches per epoch in groups of 3: 2 steps per epoch (3 batches, then 1)
    clf = FineTunedClassifier(mlp(), batch_size=16, gradient_accumulation_steps=3,
                              **{**BASE, "schedule": "onecycle"}).fit(X, y)
    rates = [b["event_lr"] for epoch in clf.history_ for b in epoch["batches"]]
    assert len(rates) == 4 * BASE["max_epochs"]
    # the rate changes only after a step: batches of one group share it
    for epoch in range(BASE["max_epochs"]):
        first, second, third, fourth = rates[4 * epoch: 4 * epoch + 4]
        assert first == second == third != fourth
    # the rates of the 6 steps are those of a run of 6 plain steps (batches of 32)
    plain = FineTunedClassifier(mlp(), batch_size=32, **{**BASE, "schedule": "onecycle"})
    plain.fit(X, y)
    per_step = [b["event_lr"] for epoch in plain.history_ for b in epoch["batches"]]
    np.testing.assert_allclose([r for i, r in enumerate(rates) if i % 4 in (0, 3)],
                               per_step, rtol=1e-12)


def test_accumulation_continues_in_partial_fit_and_is_validated(data):
    X, y, _ = data
    clf = FineTunedClassifier(mlp(), batch_size=16, gradient_accumulation_steps=2, **BASE)
    clf.partial_fit(X, y).partial_fit(X, y)
    assert len(clf.history_) == 2 and np.isfinite(clf.history_[-1, "train_loss"])
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        FineTunedClassifier(mlp(), gradient_accumulation_steps=0).fit(X, y)

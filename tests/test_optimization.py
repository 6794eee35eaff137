import numpy as np
import pytest
import torch
from skorch.callbacks import Callback
from torch import nn

from sktransfer import FineTunedClassifier
from sktransfer.training.augment import FlipAndResizedCrop
from sktransfer.backbones import ordered_param_groups
from sktransfer.training.heads import BackboneWithHead, make_head
from sktransfer.training.optimization import cosine, one_cycle, param_groups, resolve_optimizer


def body():
    return nn.Sequential(nn.Linear(64, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 16))


@pytest.fixture(scope="module")
def flat_digits(digits):
    images, labels = digits
    return (images[:200].reshape(200, -1) / 255.0).astype(np.float32), labels[:200]


class _Rates(Callback):
    """Records every parameter group's learning rate after each batch."""

    def on_train_begin(self, net, **kwargs):
        self.groups = [group["name"] for group in net.optimizer_.param_groups]
        self.rates = []

    def on_batch_end(self, net, training=False, **kwargs):
        if training:
            self.rates.append([group["lr"] for group in net.optimizer_.param_groups])


def test_discriminative_rates_and_no_decay_on_norms_and_biases():
    backbone = body()
    model = BackboneWithHead(backbone, make_head(16, 3))
    groups = param_groups(model, ordered_param_groups(backbone), lr=0.1, backbone_lr_mult=0.5,
                          weight_decay=0.05)
    by_name = {g["name"]: g for g in groups}
    # three backbone groups ("0", "1", "3"), input first: 0.1 * 0.5 ** (3 - i)
    assert by_name["backbone.0"]["lr"] == pytest.approx(0.0125)
    assert by_name["backbone.1.no_decay"]["lr"] == pytest.approx(0.025)
    assert by_name["backbone.3"]["lr"] == pytest.approx(0.05)
    assert by_name["head"]["lr"] == 0.1
    assert "backbone.1" not in by_name  # LayerNorm: only no-decay parameters
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, param in model.named_parameters():
        assert (id(param) in decayed) == (param.ndim >= 2), name
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def head_rates(clf):
    """The head's learning rate at each training step, from the history."""
    return np.array([batch["event_lr"] for epoch in clf.history_ for batch in epoch["batches"]
                     if "event_lr" in batch])


def test_estimator_uses_the_rates_and_schedules(flat_digits):
    X, y = flat_digits
    clf = FineTunedClassifier(body, lr=0.1, backbone_lr_mult=0.5, schedule="onecycle",
                              max_epochs=4, batch_size=20, callbacks=[("rates", _Rates())],
                              random_state=0).fit(X, y)
    head = head_rates(clf)
    assert len(head) == 40
    assert head[0] == pytest.approx(0.1 / 25)  # warm-up start
    assert head.max() == pytest.approx(0.1, rel=0.01) and head.argmax() == 10
    assert head[-1] < 0.01
    # the estimator copies its callbacks: read the net's copy
    rates = np.array(dict(clf.net_.callbacks_)["rates"].rates)
    np.testing.assert_allclose(rates[:, 0] / rates[:, -1], 0.125)  # 3 groups below the head
    assert isinstance(clf.net_.optimizer_, torch.optim.AdamW)

    sgd = FineTunedClassifier(body, optimizer="sgd", schedule="cosine", lr=0.2, max_epochs=2,
                              batch_size=50).fit(X, y)
    head = head_rates(sgd)
    assert head[0] == pytest.approx(0.2) and list(head) == sorted(head, reverse=True)
    assert sgd.net_.optimizer_.defaults["momentum"] == 0.9
    # partial_fit starts the schedule again from the base rate
    sgd.partial_fit(X, y)
    assert head_rates(sgd)[len(head)] == pytest.approx(0.2)

    constant = FineTunedClassifier(body, schedule=None, lr=0.03, max_epochs=2).fit(X, y)
    assert set(head_rates(constant)) == {0.03}


def test_optimizer_choices():
    assert resolve_optimizer("adam")[0] is torch.optim.Adam
    assert resolve_optimizer(torch.optim.RMSprop) == (torch.optim.RMSprop, {})
    with pytest.raises(ValueError, match="optimizer='lbfgs' is not one of"):
        resolve_optimizer("lbfgs")


def test_schedule_shapes():
    steps = [one_cycle(s, 100) for s in range(101)]
    assert steps[0] == pytest.approx(0.04) and max(steps) == pytest.approx(1.0)
    assert np.argmax(steps) == 25 and steps[-1] < 1e-4
    assert one_cycle(0, 1) == pytest.approx(0.04)  # any length works
    assert [cosine(s, 10) for s in (0, 5, 10, 12)] == pytest.approx([1, 0.5, 0, 0])


def test_augmentation_flips_and_crops_each_image_on_its_own():
    torch.manual_seed(0)
    images = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16).repeat(
        8, 1, 1, 1)
    out = FlipAndResizedCrop()(images)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert len({tuple(o.flatten().tolist()) for o in out}) == len(out)
    # the whole image, mirrored: a flip without crop
    mirror = FlipAndResizedCrop(scale=(1, 1), ratio=(1, 1))
    torch.manual_seed(1)
    out = mirror(images[:8])
    flipped = [torch.allclose(o, i.flip(-1), atol=1e-3) for o, i in zip(out, images[:8])]
    same = [torch.allclose(o, i, atol=1e-3) for o, i in zip(out, images[:8])]
    assert all(f or s for f, s in zip(flipped, same)) and any(flipped) and any(same)
    with pytest.raises(ValueError, match="preprocessed"):
        mirror(torch.zeros(3, 8, 8))


def test_the_schedule_callback_clones_and_a_users_early_stopping_keeps_no_weights():
    from sklearn.base import clone
    from skorch.callbacks import EarlyStopping

    from sktransfer.training.callbacks import LRSchedule

    assert clone(LRSchedule("cosine")).get_params() == {"schedule": "cosine"}
    X = np.random.RandomState(0).rand(30, 4).astype(np.float32)
    y = np.arange(30) % 2
    stop = EarlyStopping(monitor="train_loss", load_best=True)
    clf = FineTunedClassifier(nn.Linear(4, 3), max_epochs=2, callbacks=[("stop", stop)],
                              random_state=0).fit(X, y)
    clone(clf.net_)  # a search may clone the fitted net's settings
    # No second copy of the model is held after training, the user's callback's included.
    assert all(cb.best_model_weights_ is None for _, cb in clf.net_.callbacks_
               if isinstance(cb, EarlyStopping))

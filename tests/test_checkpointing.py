"""gradient_checkpointing=True: active while the fine-tuners train, off after, results unchanged.

Three kinds of backbone take three paths (see sktransfer/training/checkpointing.py):
a user's module is checkpointed by parameter group, a timm model through
``set_grad_checkpointing`` and a Hugging Face encoder through its own
activation checkpointing. All networks are tiny, with random weights.
"""

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback
from torch import nn

from sktransfer import FineTunedClassifier
from sktransfer.training.checkpointing import checkpointing

FAST = dict(max_epochs=2, batch_size=16, lr=0.01, early_stopping=None, schedule=None,
            random_state=0)


def _block(width):
    return nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(),
                         nn.Dropout(0.2))


def deep_mlp():
    """Four groups: an input layer and three blocks with BatchNorm and dropout."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), _block(16), _block(16), _block(16))


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    X = rng.randn(48, 6).astype(np.float32)
    return X, (X[:, 0] + X[:, 1] > 0).astype(int)


def _weights(clf):
    state = {**clf.backbone_.module.state_dict(), **clf.head_.state_dict()}
    return {k: v.detach().clone() for k, v in state.items()}


def _assert_same_model(a, b, X):
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), atol=1e-6)
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:  # BatchNorm's running statistics included
        torch.testing.assert_close(wa[key], wb[key], atol=1e-6, rtol=1e-5, msg=key)


def _no_wrapped_forward(module):
    return not any("forward" in vars(m) for m in module.modules())


class _Record(Callback):
    """Calls ``probe(net)`` at each training batch; raises KeyboardInterrupt at batch ``stop``.

    The fine-tuner trains with a deep copy of its callbacks; ``probe`` is a
    function, which copies share, so what it records reaches the test.
    """

    def __init__(self, probe, stop=None):
        self.probe, self.stop = probe, stop
        self.batches = 0

    def on_batch_end(self, net, training=False, **kwargs):
        if training:
            self.probe(net)
            self.batches += 1
            if self.batches == self.stop:
                raise KeyboardInterrupt


def test_context_restores_forward_on_error():
    net = deep_mlp()
    groups = [(n, [f"{n}.{p}" for p, _ in c.named_parameters()])
              for n, c in net.named_children() if any(True for _ in c.parameters())]
    with pytest.raises(RuntimeError, match="boom"):
        with checkpointing(net, groups):
            assert "forward" in vars(net[2])
            raise RuntimeError("boom")
    assert _no_wrapped_forward(net)
    # evaluation forwards are not checkpointed
    calls = []
    net[3][0].register_forward_hook(lambda *args: calls.append(1))
    with checkpointing(net, groups):
        net.eval()
        net(torch.randn(4, 6)).sum().backward()
    assert len(calls) == 1


def test_module_groups_same_result_and_really_checkpointed(data):
    X, y = data
    # Count, per block, the forwards that run with gradients (training
    # forwards and their recomputations; validation runs without).
    module = deep_mlp()
    counts = {}
    for name in ("0", "2", "3"):
        sub = module.get_submodule(name)
        target = sub[0] if isinstance(sub, nn.Sequential) else sub

        def hook(mod, args, out, name=name):
            if torch.is_grad_enabled():
                counts[name] = counts.get(name, 0) + 1
        target.register_forward_hook(hook)
    checked = FineTunedClassifier(module, gradient_checkpointing=True, freeze=1,
                                  freeze_epochs=0, **FAST).fit(X, y)
    steps = counts["0"]
    assert steps == 2 * 3  # 2 epochs of 3 batches; the frozen group runs once per step
    assert counts["2"] == counts["3"] == 2 * steps  # recomputed in the backward pass
    assert _no_wrapped_forward(checked.backbone_.module)
    # and changes no result (dropout replays its draws, BatchNorm's running
    # statistics are updated once per step)
    plain = FineTunedClassifier(deep_mlp(), freeze=1, freeze_epochs=0, **FAST).fit(X, y)
    _assert_same_model(plain, checked, X)


def test_module_groups_off_after_interrupted_fit(data):
    X, y = data
    seen = []
    record = _Record(lambda net: seen.append(not _no_wrapped_forward(net.module_)), stop=2)
    clf = FineTunedClassifier(deep_mlp(), gradient_checkpointing=True, callbacks=[record],
                              **FAST)
    with pytest.raises(KeyboardInterrupt):
        clf.fit(X, y)
    assert seen == [True, True]
    assert _no_wrapped_forward(clf.backbone_.module)
    assert clf.predict_proba(X).shape == (len(X), 2)  # the weights trained so far


def tiny_vit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16,
                             patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=0)


def test_timm_same_result_and_active():
    rng = np.random.RandomState(1)
    X = rng.rand(32, 3, 16, 16).astype(np.float32)
    y = (X[:, 0].mean(axis=(1, 2)) > 0.5).astype(int)
    params = dict(FAST, max_epochs=1)
    plain = FineTunedClassifier(tiny_vit(), **params).fit(X, y)
    seen = []
    record = _Record(lambda net: seen.append(net.module_.backbone.grad_checkpointing))
    checked = FineTunedClassifier(tiny_vit(), gradient_checkpointing=True, callbacks=[record],
                                  **params).fit(X, y)
    assert seen == [True, True]
    assert checked.backbone_.module.grad_checkpointing is False
    assert _no_wrapped_forward(checked.backbone_.module)  # timm's own, not by group
    _assert_same_model(plain, checked, X)


def _hf_checkpointing(module):
    models = [m for m in module.modules() if hasattr(m, "supports_gradient_checkpointing")]
    assert models
    return [m.is_activation_checkpointing if hasattr(m, "is_activation_checkpointing")
            else m.is_gradient_checkpointing for m in models]


TEXTS = ["the cat sat on the mat", "a dog ran far", "the big red dog", "a small blue cat",
         "the cat ran", "a dog sat on a mat", "big cat", "small dog"] * 3


def test_hugging_face_same_result_active_and_off_after(tiny_bert_path):
    y = np.array([("cat" in t) for t in TEXTS], dtype=int)
    params = dict(FAST, max_epochs=1, batch_size=8)
    plain = FineTunedClassifier("hf:" + tiny_bert_path, **params).fit(TEXTS, y)
    seen = []
    record = _Record(lambda net: seen.append(_hf_checkpointing(net.module_)))
    checked = FineTunedClassifier("hf:" + tiny_bert_path, gradient_checkpointing=True,
                                  callbacks=[record], **params).fit(TEXTS, y)
    assert seen == [[True]] * 3
    assert _hf_checkpointing(checked.backbone_.module) == [False]
    # non-reentrant: no hook left making the embeddings' output require a gradient
    assert all(getattr(m, "_require_grads_hook", None) is None
               for m in checked.backbone_.module.modules())
    _assert_same_model(plain, checked, TEXTS)
    # an interrupted fit switches it off too
    interrupted = FineTunedClassifier("hf:" + tiny_bert_path, gradient_checkpointing=True,
                                      callbacks=[_Record(lambda net: None, stop=1)], **params)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(TEXTS, y)
    assert _hf_checkpointing(interrupted.backbone_.module) == [False]

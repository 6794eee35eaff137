"""The memory layout CPU training runs image batches in (issue 17, fit at 224 px).

PyTorch's CPU convolutions follow the layout of their input; which layout
trains faster depends on the image size (benchmarks/bench_finetune.py), so
the fine-tuners choose it per batch, whatever the layout of ``X``. A user's
module taking 4-D tensors is left contiguous, as given.
"""

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback
from torch import nn

from sktransfer import FineTunedClassifier
from sktransfer.training.net import CHANNELS_LAST_MIN_PIXELS, cpu_training_layout


class _InputLayouts(Callback):
    """Records the layout of every input the network trains on."""

    def on_train_begin(self, net, **kwargs):
        self.layouts = []
        self.handle_ = net.module_.register_forward_pre_hook(self._record)

    def _record(self, module, args):
        if module.training:
            x = args[0]
            self.layouts.append("channels_last" if x.is_contiguous(
                memory_format=torch.channels_last) and not x.is_contiguous() else
                "contiguous" if x.is_contiguous() else "other")

    def on_train_end(self, net, **kwargs):
        self.handle_.remove()


def _training_layouts(clf, X, y):
    clf.set_params(callbacks=[_InputLayouts()]).fit(X, y)
    return set(dict(clf.net_.callbacks_)["_InputLayouts"].layouts)


def test_the_layout_threshold_is_on_pixels_per_channel():
    side = int(CHANNELS_LAST_MIN_PIXELS ** 0.5)
    assert cpu_training_layout(torch.zeros(2, 3, side, side)) == torch.channels_last
    assert cpu_training_layout(torch.zeros(2, 3, side - 1, side)) == torch.contiguous_format
    # Wide but short images count their pixels, not their shorter side.
    assert cpu_training_layout(torch.zeros(2, 3, side // 2, 2 * side)) == torch.channels_last


@pytest.mark.parametrize("image_size, expected", [(96, "channels_last"), (64, "contiguous")])
@pytest.mark.parametrize("channels_first", [False, True])
def test_image_batches_train_in_the_layout_of_their_size(image_size, expected, channels_first):
    rng = np.random.RandomState(0)
    X = rng.randint(0, 256, (6, image_size + 8, image_size + 12, 3), dtype=np.uint8)
    if channels_first:
        X = np.ascontiguousarray(X.transpose(0, 3, 1, 2))
    y = np.arange(6) % 2
    clf = FineTunedClassifier("torchvision:resnet18", weights=None, image_size=image_size,
                              max_epochs=1, batch_size=3, device="cpu", random_state=0)
    assert _training_layouts(clf, X, y) == {expected}


def test_the_layout_does_not_change_what_is_learned():
    # The same images as (N, H, W, C) and (N, C, H, W) train the same model
    # up to the rounding of the two layouts' kernels.
    rng = np.random.RandomState(0)
    X = rng.randint(0, 256, (6, 100, 100, 3), dtype=np.uint8)
    y = np.arange(6) % 2
    params = dict(weights=None, image_size=96, max_epochs=1, batch_size=3, device="cpu",
                  random_state=0)
    nhwc = FineTunedClassifier("torchvision:resnet18", **params).fit(X, y)
    nchw = FineTunedClassifier("torchvision:resnet18", **params).fit(
        np.ascontiguousarray(X.transpose(0, 3, 1, 2)), y)
    np.testing.assert_allclose(nhwc.history_[:, "train_loss"], nchw.history_[:, "train_loss"],
                               rtol=1e-4)


class _ViewsItsInput(nn.Module):
    """A user's module that flattens its input with ``view``, which needs
    contiguous strides."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 100 * 100, 4)

    def forward(self, x):
        return self.fc(x.view(len(x), -1))


def test_a_users_module_trains_on_contiguous_input():
    rng = np.random.RandomState(0)
    X = rng.rand(6, 3, 100, 100).astype(np.float32)
    y = np.arange(6) % 2
    clf = FineTunedClassifier(_ViewsItsInput(), max_epochs=1, batch_size=3, device="cpu",
                              random_state=0)
    assert _training_layouts(clf, X, y) == {"contiguous"}

"""Freeze the first layers of a CNN and fine-tune the rest, on handwritten digits.

A CNN trained on the digits 0-4 (the source task) is fine-tuned on the digits
5-9 (the target task) with a new head. ``freeze`` decides how much of the
source network stays as it was: ``"none"`` trains everything, an integer N
keeps the first N layer groups (input first) frozen, ``"backbone"`` trains the
head alone. The script checks that frozen weights did not move, and shows
which groups a backbone has.

Run: ``python examples/freeze_first_layers.py``
(set ``SKTRANSFER_EXAMPLE_QUICK=1`` for a faster, smaller run).
"""

import os
from collections import OrderedDict

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from sktransfer import FineTunedClassifier

QUICK = os.environ.get("SKTRANSFER_EXAMPLE_QUICK") == "1"
EPOCHS = 3 if QUICK else 20
torch.set_num_threads(1)  # a network this small runs fastest on one thread


def digits_cnn():
    # Conv(32) -> pool -> Conv(64) -> pool -> flatten; the new head adds Dense(64) -> classes.
    return nn.Sequential(OrderedDict(
        conv1=nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        conv2=nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        flatten=nn.Flatten(),
    ))


digits = load_digits()
X = (digits.images[:, None] / 16.0).astype(np.float32)  # (1797, 1, 8, 8) in [0, 1]
y = digits.target
source, target = y < 5, y >= 5

source_model = FineTunedClassifier(digits_cnn, head=(64,), lr=3e-3, max_epochs=EPOCHS,
                                   random_state=0).fit(X[source], y[source])
print("layer groups of the backbone, input first:", source_model.backbone_.layer_names)

# Few target labels: 10 per class for training, the rest for testing.
X_train, X_test, y_train, y_test = train_test_split(
    X[target], y[target], train_size=50, stratify=y[target], random_state=0)

conv1_before = source_model.backbone_.module.conv1[0].weight.detach().clone()
print(f"{'freeze':>10}  {'test accuracy':>13}  conv1 moved")
for freeze in ["none", 1, "backbone"]:
    model = FineTunedClassifier(source_model, head=(64,), freeze=freeze, lr=3e-3,
                                max_epochs=EPOCHS, random_state=0).fit(X_train, y_train)
    moved = not torch.equal(model.backbone_.module.conv1[0].weight, conv1_before)
    print(f"{freeze!s:>10}  {model.score(X_test, y_test):>13.3f}  {moved}")
    if freeze != "none" and moved:
        raise SystemExit("a frozen layer changed")

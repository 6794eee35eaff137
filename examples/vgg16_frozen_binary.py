"""A frozen VGG16 body with a new dense head, for a binary image task.

The classic recipe: take VGG16 pretrained on ImageNet, freeze it, and train a
new head (here Dense(1024, ReLU) -> 2 classes) on the target task. The task:
tell whether a 64x64 patch comes from scikit-learn's "china" photo or its
"flower" photo; training patches come from the left part of each photo and
test patches from the right part, so no pixel is in both.

``weights="DEFAULT"`` uses the ImageNet weights from torch's cache
(``~/.cache/torch/hub/checkpoints/vgg16-397923af.pth``, downloaded once when
the machine is online). Without network and without the file, sktransfer
raises an OSError that says where it looked and how to pass a local file;
this script prints it and carries on with random weights, which only shows
that the code runs (the accuracy then means little).

Run: ``python examples/vgg16_frozen_binary.py``
(set ``SKTRANSFER_EXAMPLE_QUICK=1`` for a faster, smaller run).
"""

import os

import numpy as np
from sklearn.datasets import load_sample_images

from sktransfer import FineTunedClassifier

QUICK = os.environ.get("SKTRANSFER_EXAMPLE_QUICK") == "1"
PATCHES = 8 if QUICK else 40  # per photo and split
SIZE = 32 if QUICK else 64


def patches(image, n, columns, rng):
    """``n`` random SIZE x SIZE patches whose left edge lies in ``columns``."""
    out = []
    for _ in range(n):
        top = rng.randint(0, image.shape[0] - SIZE)
        left = rng.randint(columns.start, columns.stop - SIZE)
        out.append(image[top:top + SIZE, left:left + SIZE])
    return out


rng = np.random.RandomState(0)
china, flower = load_sample_images().images  # (427, 640, 3) uint8 each
split = 400  # columns [0, 400) for training, [400, 640) for testing
X_train = np.stack(patches(china, PATCHES, range(0, split), rng)
                   + patches(flower, PATCHES, range(0, split), rng))
X_test = np.stack(patches(china, PATCHES, range(split, 640), rng)
                  + patches(flower, PATCHES, range(split, 640), rng))
y_train = y_test = np.array(["china"] * PATCHES + ["flower"] * PATCHES)

clf = FineTunedClassifier("torchvision:vgg16", weights="DEFAULT", freeze="backbone",
                          head=(1024,), image_size=SIZE, max_epochs=2 if QUICK else 5,
                          batch_size=16, random_state=0)
try:
    clf.fit(X_train, y_train)
except OSError as exc:
    print(f"ImageNet weights unavailable, continuing with random weights.\n  {exc}")
    clf.set_params(weights=None).fit(X_train, y_train)

trainable = sum(p.numel() for p in clf.head_.parameters())
frozen = sum(p.numel() for p in clf.backbone_.module.parameters())
print(f"weights: {clf.weights}; {frozen:,} frozen backbone parameters, "
      f"{trainable:,} trained in the head")
print(f"test accuracy (china vs flower patches): {clf.score(X_test, y_test):.3f}")

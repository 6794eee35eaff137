"""Parameter transfer: source weights as the start of a target task, and L2-SP.

A small CNN is trained on a source task (the digits 0-4). Its weights become
the starting point of a target task (the digits 5-9, 2 labelled images per
class): passing the fitted source model as ``backbone=`` does what Keras'
``target_model.set_weights(source_model.get_weights())`` does, with a new
head for the new classes.

The target training loss can add a penalty R(f_t, f_s) that keeps the target
weights near the source weights, ``L_t + lambda * R(f_t, f_s)``. ``l2sp=alpha``
is that penalty in its L2-SP form: ``alpha/2 * ||w - w_source||^2`` on the
transferred weights, ``alpha/2 * ||w_head||^2`` on the new head. The script
prints, for each model, the test accuracy and how far its weights moved from
the source's, averaged over random draws of the labelled images.

Run: ``python examples/parameter_transfer_l2sp.py``
(set ``SKTRANSFER_EXAMPLE_QUICK=1`` for a faster, smaller run).
"""

import os

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from sktransfer import FineTunedClassifier

QUICK = os.environ.get("SKTRANSFER_EXAMPLE_QUICK") == "1"
SEEDS = [0] if QUICK else [0, 1, 2, 3, 4]
EPOCHS = 5 if QUICK else 40
torch.set_num_threads(1)  # a network this small runs fastest on one thread

digits = load_digits()
X = (digits.images[:, None] / 16.0).astype(np.float32)  # (1797, 1, 8, 8) in [0, 1]
y = digits.target
source, target = y < 5, y >= 5
X_pool, X_test, y_pool, y_test = train_test_split(
    X[target], y[target], test_size=0.5, stratify=y[target], random_state=0)


def digits_cnn():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten())


source_model = FineTunedClassifier(digits_cnn, head=(64,), lr=3e-3, max_epochs=EPOCHS // 2,
                                   random_state=0).fit(X[source], y[source])
print(f"source model: accuracy {source_model.score(X[source], y[source]):.3f} on its "
      "own training data (digits 0-4)")
w_source = torch.cat([p.detach().flatten() for p in source_model.backbone_.module.parameters()])

candidates = {
    "from scratch": dict(backbone=digits_cnn, weights=None),
    "source weights": dict(backbone=source_model),
    "source weights + L2-SP 0.01": dict(backbone=source_model, l2sp=0.01, weight_decay=0.0),
    "source weights + L2-SP 0.1": dict(backbone=source_model, l2sp=0.1, weight_decay=0.0),
    "source weights + L2-SP 1": dict(backbone=source_model, l2sp=1.0, weight_decay=0.0),
}
print(f"{'target model':<28} {'test accuracy':>15} {'||w - w_source||':>17}")
for name, params in candidates.items():
    accuracy, distance = [], []
    for seed in SEEDS:
        rng = np.random.RandomState(seed)
        few = np.concatenate([rng.choice(np.flatnonzero(y_pool == c), 2, replace=False)
                              for c in range(5, 10)])
        model = FineTunedClassifier(**params, head=(64,), lr=3e-3, max_epochs=EPOCHS,
                                    random_state=seed)
        model.fit(X_pool[few], y_pool[few])
        accuracy.append(model.score(X_test, y_test))
        w = torch.cat([p.detach().flatten() for p in model.backbone_.module.parameters()])
        distance.append(float((w - w_source).norm()))
    print(f"{name:<28} {np.mean(accuracy):>9.3f} ±{np.std(accuracy):.3f} "
          f"{np.mean(distance):>17.2f}")

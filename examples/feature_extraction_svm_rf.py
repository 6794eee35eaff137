"""Feature extraction: a trained network's features for an SVM and a random forest.

A CNN trained on one task (the digits 0-4) is frozen and used as a feature
extractor for another (the digits 5-9, 10 labelled images per class). The
extractor is a Pipeline step like any scaler, so the classic models after it
are trained, cross-validated and searched as usual. The same models on raw
pixels show what the learnt features add.

With a network pretrained on ImageNet the code is the same, for instance
``PretrainedFeatureTransformer("torchvision:resnet50")`` on photos.

Run: ``python examples/feature_extraction_svm_rf.py``
(set ``SKTRANSFER_EXAMPLE_QUICK=1`` for a faster, smaller run).
"""

import os

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import SVC
from torch import nn

from sktransfer import FineTunedClassifier, PretrainedFeatureTransformer

QUICK = os.environ.get("SKTRANSFER_EXAMPLE_QUICK") == "1"
torch.set_num_threads(1)  # a network this small runs fastest on one thread

digits = load_digits()
X = (digits.images[:, None] / 16.0).astype(np.float32)  # (1797, 1, 8, 8) in [0, 1]
y = digits.target
source, target = y < 5, y >= 5


def digits_cnn():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten())


# The source task: plenty of labels.
extractor = FineTunedClassifier(digits_cnn, head=(64,), lr=3e-3, max_epochs=3 if QUICK else 20,
                                random_state=0).fit(X[source], y[source])

# The target task: 10 labelled images per class.
X_train, X_test, y_train, y_test = train_test_split(
    X[target], y[target], train_size=50, stratify=y[target], random_state=0)


def flatten(X):
    return X.reshape(len(X), -1)


pixels = FunctionTransformer(flatten)
models = {
    "pixels + SVC": make_pipeline(pixels, StandardScaler(), SVC()),
    "pixels + random forest": make_pipeline(pixels, RandomForestClassifier(random_state=0)),
    "source features + SVC": make_pipeline(
        PretrainedFeatureTransformer(extractor), StandardScaler(), SVC()),
    "source features + random forest": make_pipeline(
        PretrainedFeatureTransformer(extractor), RandomForestClassifier(random_state=0)),
}
print(f"{len(y_train)} labelled target images, {len(y_test)} test images")
for name, model in models.items():
    model.fit(X_train, y_train)
    print(f"{name:<32} test accuracy {model.score(X_test, y_test):.3f}")

features = models["source features + SVC"][0].transform(X_test[:3])
print(f"each image becomes {features.shape[1]} features, e.g. {np.round(features[0, :4], 2)}")

"""Multilabel image tagging: one fine-tuned network, several tags per image.

Each image of a handwritten digit gets three yes/no tags: *even*, *greater
than 4* and *has a loop* (0, 6, 8 and 9). An image can carry any number of
them, so the target is an indicator matrix ``Y`` of shape (n_images, 3), one
column per tag, as scikit-learn's multilabel classifiers take it.

A CNN trained on another task (telling the digits 0-4 apart) is the
backbone. ``FineTunedClassifier.fit(X, Y)`` puts a 3-output head on it and
fine-tunes one network for all the tags with binary cross-entropy; its
``predict`` gives the indicator matrix and ``predict_proba`` each tag's
probability; ``score`` is the subset accuracy (every tag of an image right).
The baselines fit one logistic regression per tag
(``MultiOutputClassifier``), on the pixels and on the source network's
frozen features.

Run: ``python examples/multilabel_image_tagging.py``
(set ``SKTRANSFER_EXAMPLE_QUICK=1`` for a faster, smaller run).
"""

import os

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from sklearn.multioutput import MultiOutputClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from torch import nn

from sktransfer import FineTunedClassifier, PretrainedFeatureTransformer

QUICK = os.environ.get("SKTRANSFER_EXAMPLE_QUICK") == "1"
EPOCHS = 3 if QUICK else 20
torch.set_num_threads(1)  # a network this small runs fastest on one thread

digits = load_digits()
X = (digits.images[:, None] / 16.0).astype(np.float32)  # (1797, 1, 8, 8) in [0, 1]
digit = digits.target

TAGS = ["even", "greater than 4", "has a loop"]
Y = np.column_stack([digit % 2 == 0, digit > 4, np.isin(digit, [0, 6, 8, 9])]).astype(int)


def digits_cnn():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten())


# The source task, on half of the images: which of the digits 0-4 it is.
X_source, X_target, digit_source, digit_target, _, Y_target = train_test_split(
    X, digit, Y, train_size=0.5, random_state=0)
keep = digit_source < 5
source = FineTunedClassifier(digits_cnn, head=(64,), lr=3e-3, max_epochs=EPOCHS,
                             random_state=0).fit(X_source[keep], digit_source[keep])

# The target task, on the other half: tag images of all ten digits, from 200 tagged ones.
X_train, X_test, Y_train, Y_test, _, digit_test = train_test_split(
    X_target, Y_target, digit_target, train_size=200, random_state=0)
print(f"{len(X_train)} tagged training images, {len(X_test)} test images; "
      f"Y is {Y_train.shape[0]} x {Y_train.shape[1]}, {Y_train.sum(1).mean():.2f} tags an image")


def flatten(X):
    return X.reshape(len(X), -1)


def per_tag_logistic_regression():
    return MultiOutputClassifier(LogisticRegression(max_iter=2000))


models = {
    "pixels + LR per tag": make_pipeline(
        FunctionTransformer(flatten), StandardScaler(), per_tag_logistic_regression()),
    "source features + LR per tag": make_pipeline(
        PretrainedFeatureTransformer(source), StandardScaler(), per_tag_logistic_regression()),
    # Head first (freeze_epochs=2): with 200 samples, a new head trained by small
    # steps lags behind; fitted to convergence first, it starts where the probe ends.
    "fine-tuned, one 3-output net": FineTunedClassifier(
        backbone=source, head=(64,), freeze_epochs=2, max_epochs=EPOCHS, random_state=0),
}

print(f"{'':<30}" + "".join(f"{tag:>16}" for tag in TAGS) + f"{'f1_samples':>12}")
for name, model in models.items():
    model.fit(X_train, Y_train)
    Y_pred = model.predict(X_test)  # (n, 3) indicator matrix
    per_tag = f1_score(Y_test, Y_pred, average=None)
    # The digits 1 and 3 carry no tag: predicting none for them scores 1.
    per_image = f1_score(Y_test, Y_pred, average="samples", zero_division=1.0)
    print(f"{name:<30}" + "".join(f"{f:>16.3f}" for f in per_tag) + f"{per_image:>12.3f}")

tagger = models["fine-tuned, one 3-output net"]
proba = tagger.predict_proba(X_test[:1])[0]
print(f"classes_ {tagger.classes_}; the first test image, a {digit_test[0]}: "
      + ", ".join(f"{tag} {p:.2f}" for tag, p in zip(TAGS, proba)))
print(f"subset accuracy (score): {tagger.score(X_test, Y_test):.3f}")

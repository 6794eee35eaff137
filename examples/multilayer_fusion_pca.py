"""Multi-layer feature fusion, then PCA, then a classifier.

Early layers of a network hold generic features (strokes, edges), later ones
features specific to the task it was trained for. ``layers=`` extracts several
layers at once: each layer's output is pooled over space (``pooling="avg"`` or
``"max"``) and the results are concatenated. A PCA then compresses the fused
features before a logistic regression.

The network here is a CNN trained on the digits 0-4, used for the digits 5-9.
With an ImageNet network the call is the same, for instance
``PretrainedFeatureTransformer("torchvision:resnet18", layers=["layer2", "layer3", "layer4"])``;
``backbone_.layer_names`` lists the names a backbone offers.

Run: ``python examples/multilayer_fusion_pca.py``
(set ``SKTRANSFER_EXAMPLE_QUICK=1`` for a faster, smaller run).
"""

import os
from collections import OrderedDict

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from sktransfer import FineTunedClassifier, PretrainedFeatureTransformer

QUICK = os.environ.get("SKTRANSFER_EXAMPLE_QUICK") == "1"
torch.set_num_threads(1)  # a network this small runs fastest on one thread

digits = load_digits()
X = (digits.images[:, None] / 16.0).astype(np.float32)  # (1797, 1, 8, 8) in [0, 1]
y = digits.target
source, target = y < 5, y >= 5


def digits_cnn():
    return nn.Sequential(OrderedDict(
        conv1=nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU()),           # 16 x 8 x 8
        conv2=nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                            nn.MaxPool2d(2)),                                        # 32 x 4 x 4
        conv3=nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU()),          # 64 x 4 x 4
        pool=nn.AdaptiveMaxPool2d(1), flatten=nn.Flatten(),                         # 64
    ))


network = FineTunedClassifier(digits_cnn, lr=3e-3, max_epochs=3 if QUICK else 20,
                              random_state=0).fit(X[source], y[source])
print("layers:", network.backbone_.layer_names)

X_train, X_test, y_train, y_test = train_test_split(
    X[target], y[target], train_size=100, stratify=y[target], random_state=0)

for layers in (["conv3"], ["conv2", "conv3"], ["conv1", "conv2", "conv3"]):
    pipe = make_pipeline(
        PretrainedFeatureTransformer(network, layers=layers, pooling="max"),
        StandardScaler(), PCA(n_components=24, random_state=0),
        LogisticRegression(max_iter=2000))
    pipe.fit(X_train, y_train)
    width = pipe[0].n_features_out_
    kept = pipe[2].explained_variance_ratio_.sum()
    print(f"layers {'+'.join(layers):<18} {width:>3} fused features -> 24 PCA components "
          f"({kept:.0%} of the variance): test accuracy {pipe.score(X_test, y_test):.3f}")

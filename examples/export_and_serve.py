"""Export a fitted pipeline to one ONNX file and serve it without PyTorch.

A resnet18 feature extractor and a logistic regression are fitted on
handwritten digits given as uint8 RGB images. ``sktransfer.export_onnx``
writes the whole pipeline (resizing and normalization, the network, the
scaler and the logistic regression) as one graph that takes the raw uint8
images, checks it against the pipeline on the samples given, and writes it.

The graph is then served the way a slim container would serve it: in a
fresh Python process where torch and sktransfer cannot even be imported,
with only numpy and onnxruntime. Its labels and probabilities are compared
with the pipeline's.

The network's weights are random here (nothing is downloaded); with
``weights="DEFAULT"`` the same code exports the pretrained network.

Run: ``python examples/export_and_serve.py``
(set ``SKTRANSFER_EXAMPLE_QUICK=1`` for a smaller run).
"""

import os
import subprocess
import sys
import tempfile

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import sktransfer
from sktransfer import PretrainedFeatureTransformer

QUICK = os.environ.get("SKTRANSFER_EXAMPLE_QUICK") == "1"

digits = load_digits()
n = 300 if QUICK else len(digits.images)
# uint8 RGB images (N, H, W, 3), as a camera or an image decoder gives them.
gray = (digits.images[:n] * (255 / 16)).astype(np.uint8)
images = np.repeat(gray[..., None], 3, axis=-1)
X_train, X_test, y_train, y_test = train_test_split(images, digits.target[:n], test_size=0.3,
                                                    random_state=0, stratify=digits.target[:n])

pipe = make_pipeline(
    PretrainedFeatureTransformer("torchvision:resnet18", weights=None, image_size=32,
                                 random_state=0),
    StandardScaler(),
    LogisticRegression(max_iter=2000),
).fit(X_train, y_train)
print(f"pipeline test accuracy: {pipe.score(X_test, y_test):.3f}")

folder = tempfile.mkdtemp()
path = os.path.join(folder, "digits.onnx")
check = sktransfer.export_onnx(pipe, path, X_test[:16])
print(f"exported {os.path.getsize(path) / 1e6:.1f} MB; outputs {check.outputs}; largest "
      f"probability difference on the check samples {check.max_abs_difference['probabilities']:.1e}")

# The serving side: numpy and onnxruntime only (torch and sktransfer blocked).
SERVE = """
import sys
sys.modules["torch"] = None
sys.modules["sktransfer"] = None
import numpy as np
import onnxruntime as ort

session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
images = np.load(sys.argv[2])
labels, probabilities = session.run(["label", "probabilities"], {"X": images})
np.save(sys.argv[3], probabilities)
np.save(sys.argv[4], labels)
"""
np.save(os.path.join(folder, "images.npy"), X_test)
out_p, out_l = os.path.join(folder, "p.npy"), os.path.join(folder, "l.npy")
subprocess.run([sys.executable, "-c", SERVE, path, os.path.join(folder, "images.npy"),
                out_p, out_l], check=True)
served_p, served_l = np.load(out_p), np.load(out_l)
print(f"served without torch: labels equal the pipeline's: "
      f"{bool(np.array_equal(served_l, pipe.predict(X_test)))}; largest probability "
      f"difference {np.abs(served_p - pipe.predict_proba(X_test)).max():.1e}")

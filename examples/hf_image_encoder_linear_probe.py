"""A Hugging Face image encoder (DINOv2) as frozen features for a linear probe.

With a model from the Hugging Face hub, the one line you write is::

    PretrainedFeatureTransformer("hf:facebook/dinov2-small")

and sktransfer reads the model's image processor (resize, crop, rescale,
normalize) and gives DINOv2's documented embedding, its normed class token
(``pooling="cls+avg"`` adds the mean of its patch tokens, as DINOv2's
authors probe). The same works for ViT, CLIP and SigLIP image towers,
ConvNeXt and ResNet models.

This script runs offline, so it cannot download those weights: it builds a
small DINOv2 from a config with **random weights**, saves it with its image
processor to a temporary folder, and embeds scikit-learn's digits with it.
Random weights show the code path, not the accuracy of pretrained DINOv2;
pixel values are a fair baseline to read the printed figures against.

Run: ``python examples/hf_image_encoder_linear_probe.py``
(set ``SKTRANSFER_EXAMPLE_QUICK=1`` for a faster, smaller run).
"""

import os
import tempfile

import numpy as np
import torch
import transformers
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import PretrainedFeatureTransformer

QUICK = os.environ.get("SKTRANSFER_EXAMPLE_QUICK") == "1"
N = 300 if QUICK else 1797

digits = load_digits()
images = np.round(digits.images[:N] / 16 * 255).astype(np.uint8)  # (N, 8, 8) grayscale
labels = digits.target[:N]
X_train, X_test, y_train, y_test = train_test_split(images, labels, test_size=0.3,
                                                    stratify=labels, random_state=0)

folder = tempfile.mkdtemp()
# A small DINOv2 (random weights) and the processor DINOv2 checkpoints ship
# (BitImageProcessor: shorter side to 256/224 of the crop, bicubic, center
# crop, ImageNet mean and std), here at a 32-pixel crop.
torch.manual_seed(0)
config = transformers.Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   mlp_ratio=2, image_size=32, patch_size=8)
transformers.Dinov2Model(config).save_pretrained(folder)
transformers.BitImageProcessor(size={"shortest_edge": 36},
                               crop_size={"height": 32, "width": 32},
                               image_mean=[0.485, 0.456, 0.406],
                               image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)

print(f"{len(images)} digits (8x8 grayscale, repeated to RGB), "
      f"{len(X_train)} to train, {len(X_test)} to test")
print(f"{'features':<28}{'width':>6}{'test accuracy':>15}")
pixels = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
pixels.fit(X_train.reshape(len(X_train), -1), y_train)
accuracy = pixels.score(X_test.reshape(len(X_test), -1), y_test)
print(f"{'raw pixels':<28}{64:>6}{accuracy:>15.3f}")
for pooling in ("auto", "cls+avg"):
    probe = make_pipeline(
        PretrainedFeatureTransformer(f"hf:{folder}", pooling=pooling, batch_size=64),
        StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(X_train, y_train)
    width = probe[0].n_features_out_
    name = f"DINOv2 (random) {pooling}"
    print(f"{name:<28}{width:>6}{probe.score(X_test, y_test):>15.3f}")

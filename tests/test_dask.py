"""Searches run on a real Dask cluster give the results of the same search run locally.

The cluster is a ``dask.distributed.LocalCluster`` of two worker processes,
each a separate Python interpreter that unpickles the estimators, loads the
backbones itself and writes to the shared feature cache, as the workers of a
multi-node cluster do. Torch runs on one thread in the workers and in this
process, so that both sides compute in the same order and the scores are
compared exactly.
"""

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC
from torch import nn

from conftest import local_dask_client
from sktransfer import FineTunedClassifier, PretrainedFeatureTransformer

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    with local_dask_client() as dask_client:
        yield dask_client


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fit_on_dask(client, search, X, y):
    """Fit a clone of ``search`` through joblib's dask backend; check where it ran."""
    with distributed.get_task_stream(client) as tasks, joblib.parallel_backend("dask"):
        fitted = clone(search).fit(X, y)
    # The fits ran as tasks in the worker processes, not in this one.
    assert tasks.data and {t["worker"] for t in tasks.data} <= set(client.scheduler_info()
                                                                    ["workers"])
    return fitted


def assert_same_search(local, on_dask):
    np.testing.assert_array_equal(on_dask.cv_results_["mean_test_score"],
                                  local.cv_results_["mean_test_score"])
    assert on_dask.best_params_ == local.best_params_
    assert on_dask.best_score_ == local.best_score_


def test_pipeline_search_on_dask_equals_local(client, one_thread, digits, tmp_path):
    X, y = digits[0][:90], digits[1][:90]
    cache = tmp_path / "cache"
    pipe = Pipeline([
        ("features", PretrainedFeatureTransformer(
            "torchvision:resnet18", weights=None, image_size=32, random_state=0,
            device="cpu")),
        ("svc", SVC()),
    ])
    search = GridSearchCV(pipe, {"svc__C": [0.1, 1.0, 10.0]}, cv=3)
    local = clone(search).fit(X, y)

    assert_same_search(local, fit_on_dask(client, search, X, y))
    # With a cache directory the workers share, as on a shared file system.
    cached = fit_on_dask(client, search.set_params(estimator__features__cache=str(cache)), X, y)
    assert_same_search(local, cached)
    assert list(cache.rglob("*.safetensors"))
    np.testing.assert_array_equal(cached.predict(X), local.predict(X))


def test_fine_tuned_classifier_search_on_dask_equals_local(client, one_thread, digits):
    images, labels = digits
    X = (images[:120].reshape(120, -1) / 255.0).astype(np.float32)
    y = labels[:120]
    clf = FineTunedClassifier(nn.Sequential(nn.Linear(64, 32), nn.ReLU()), max_epochs=4,
                              batch_size=16, device="cpu", random_state=0)
    search = GridSearchCV(clf, {"lr": [1e-3, 1e-2], "freeze": ["none", "backbone"]}, cv=2)
    local = clone(search).fit(X, y)
    on_dask = fit_on_dask(client, search, X, y)
    assert_same_search(local, on_dask)
    np.testing.assert_array_equal(on_dask.predict(X), local.predict(X))

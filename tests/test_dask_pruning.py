"""Dask workers let go of a model when the client no longer needs it.

A ``LocalCluster`` of two worker processes (one thread each), shared by the
module; the models are small linear maps, so what is measured is what the
workers keep, not how long they take to build it.
"""

import hashlib
import pickle
import time

import numpy as np
import pytest
import torch
from torch import nn

from conftest import local_dask_client
from sktransfer import PretrainedFeatureTransformer
from sktransfer.scaling import worker_models

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")


@pytest.fixture(scope="module")
def client():
    with local_dask_client() as dask_client:
        yield dask_client


@pytest.fixture(scope="module")
def X():
    return np.random.RandomState(0).rand(40, 3).astype(np.float32)


def fitted(X, seed):
    torch.manual_seed(seed)
    return PretrainedFeatureTransformer(nn.Linear(3, 2), device="cpu").fit(X)


def digest_of(estimator):
    # How the model is named when it is shipped (a digest of its pickle).
    return hashlib.blake2b(pickle.dumps(estimator, protocol=5), digest_size=20).hexdigest()


def held(client):
    """``{worker: {digest: loads}}``: the models each worker holds."""
    return {w: {m["digest"]: m["loads"] for m in ms}
            for w, ms in client.run(worker_models).items()}


def held_within(client, seconds, done):
    """What the workers hold, polled until ``done(held)`` or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while True:
        now = held(client)
        if done(now) or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def test_dropped_estimators_leave_the_workers_and_a_held_one_stays_loaded_once(client, X):
    dX = da.from_array(X, chunks=10)
    kept = fitted(X, seed=100)
    expected = kept.transform(X)
    np.testing.assert_allclose(kept.transform(dX).compute(), expected, rtol=1e-6)
    kept_digest = digest_of(kept)

    for seed in range(5):
        est = fitted(X, seed)
        np.testing.assert_allclose(est.transform(dX).compute(), est.transform(X), rtol=1e-6)
    del est

    models = held_within(client, 1.0, lambda h: all(len(d) <= 2 for d in h.values()))
    assert len(models) == 2
    assert all(len(d) <= 2 for d in models.values()), models
    # The estimator still held is on every worker, deserialized once, and is
    # neither sent nor loaded again when used again.
    assert all(d.get(kept_digest) == 1 for d in models.values()), models
    np.testing.assert_allclose(kept.transform(dX).compute(), expected, rtol=1e-6)
    assert all(d.get(kept_digest) == 1 for d in held(client).values())

    del kept
    models = held_within(client, 1.0, lambda h: not any(h.values()))
    assert models == {w: {} for w in models}


def test_a_lazy_result_keeps_its_model_after_the_estimator_is_dropped(client, X):
    dX = da.from_array(X, chunks=10)
    est = fitted(X, seed=7)
    expected, digest = est.transform(X), digest_of(est)
    lazy = est.transform(dX)
    del est
    time.sleep(0.2)
    np.testing.assert_allclose(lazy.compute(), expected, rtol=1e-6)
    assert all(d.get(digest) == 1 for d in held(client).values())
    del lazy
    models = held_within(client, 1.0, lambda h: not any(digest in d for d in h.values()))
    assert not any(digest in d for d in models.values()), models

"""Lazy Dask collections in and out, on a real cluster, with the model sent once per worker.

The cluster is a ``LocalCluster`` of two worker processes (two threads
each, so the threads of a worker share its model), shared by the module.
Workers and this process run torch on one thread per operation, so a
partition computed on a worker is computed as the same samples are here,
and results compare exactly where the batches are the same.
"""

import os
import pickle
import threading
import time

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from torch import nn

from conftest import local_dask_client
from sktransfer import FineTunedClassifier, FineTunedRegressor, PretrainedFeatureTransformer
from sktransfer.scaling import release_models, worker_models
from sktransfer.scaling.shipping import KEY_PREFIX

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")
db = pytest.importorskip("dask.bag")
dd = pytest.importorskip("dask.dataframe")
pd = pytest.importorskip("pandas")


@pytest.fixture(scope="module")
def client():
    with local_dask_client(threads_per_worker=2) as dask_client:
        yield dask_client


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def images():
    return np.random.RandomState(0).randint(0, 256, (96, 16, 16, 3)).astype(np.uint8)


@pytest.fixture(scope="module")
def resnet(images):
    """resnet18 with random weights (45 MB) at 32 pixels."""
    return PretrainedFeatureTransformer("torchvision:resnet18", weights=None, image_size=32,
                                        device="cpu", random_state=0).fit(images[:2])


def held(client, estimator_name=None):
    """``{worker: [model info]}`` of what each worker holds, optionally of one class."""
    return {w: [m for m in models if estimator_name in (None, m["estimator"])]
            for w, models in client.run(worker_models).items()}


def test_array_in_array_out_equals_in_memory_model_loaded_once_per_worker(client, resnet,
                                                                          images):
    X = da.from_array(images, chunks=(12, 16, 16, 3))
    lazy = resnet.transform(X)
    # Lazy, with its width and dtype known before anything is computed.
    assert isinstance(lazy, da.Array)
    assert lazy.shape == (96, 512) and lazy.dtype == np.float32
    assert lazy.chunks == ((12,) * 8, (512,))
    expected = np.concatenate([resnet.transform(images[i:i + 12]) for i in range(0, 96, 12)])
    np.testing.assert_array_equal(lazy.compute(), expected)
    # A second call, and a computation that composes with map_blocks.
    norms = resnet.transform(X).map_blocks(lambda b: (b ** 2).sum(1, keepdims=True),
                                           chunks=((12,) * 8, (1,)))
    np.testing.assert_allclose(norms.compute()[:, 0], (expected ** 2).sum(1), rtol=1e-5)

    models = held(client, "PretrainedFeatureTransformer")
    assert len(models) == 2
    for worker_models_ in models.values():
        # 8 tasks per call, two calls, two threads: one deserialization, one engine.
        assert [(m["loads"], m["engines"]) for m in worker_models_] == [(1, ["transform"])]


def test_task_graph_of_40_partitions_carries_a_reference_not_the_model(client, resnet):
    from distributed.protocol.pickle import dumps

    X = da.zeros((160, 16, 16, 3), dtype=np.uint8, chunks=(4, 16, 16, 3))  # 40 partitions
    model_bytes = len(pickle.dumps(resnet, protocol=5))
    assert model_bytes > 40e6
    graph = dict(resnet.transform(X).__dask_graph__())
    ours = len(dumps(graph))
    # The same job written by hand, the model closed over: the measure sees it.
    by_hand = X.map_blocks(lambda b: resnet.transform(b), drop_axis=[2, 3],
                           chunks=(X.chunks[0], (512,)), dtype=np.float32)
    assert len(dumps(dict(by_hand.__dask_graph__()))) > model_bytes
    assert ours < model_bytes / 1000, (ours, model_bytes)
    # What stands for the model in the tasks: its key.
    assert KEY_PREFIX.encode() in dumps(graph)


def test_dataframe_columns_and_bags_of_paths(client, resnet, image_files):
    paths, _ = image_files
    expected = resnet.transform(paths)
    frame = pd.DataFrame({"path": paths}, index=np.arange(100, 112))
    ddf = dd.from_pandas(frame, npartitions=3)
    for X in (ddf["path"], ddf[["path"]]):
        lazy = resnet.transform(X)
        assert isinstance(lazy, dd.DataFrame)
        assert list(lazy.columns) == list(resnet.get_feature_names_out())
        assert (lazy.dtypes == np.float32).all()
        out = lazy.compute()
        np.testing.assert_array_equal(out.index, frame.index)
        np.testing.assert_allclose(out.to_numpy(), expected, rtol=1e-5, atol=1e-6)
    rows = resnet.transform(db.from_sequence(paths, npartitions=4)).compute()
    np.testing.assert_allclose(np.stack(rows), expected, rtol=1e-5, atol=1e-6)


def test_dataframe_column_and_bag_of_texts(client, tiny_bert_path):
    texts = ["the cat sat on the mat", "a dog ran far", "big red dog", "small blue cat",
             "the mat", "a cat ran on a big mat", "dog", "the small red cat sat"]
    pft = PretrainedFeatureTransformer(f"hf:{tiny_bert_path}", device="cpu").fit(texts)
    expected = pft.transform(texts)
    column = dd.from_pandas(pd.Series(texts, name="text"), npartitions=3)
    np.testing.assert_allclose(pft.transform(column).compute().to_numpy(), expected,
                               rtol=1e-5, atol=1e-6)
    bag = db.from_sequence(texts, npartitions=2)
    np.testing.assert_allclose(np.stack(pft.transform(bag).compute()), expected,
                               rtol=1e-5, atol=1e-6)


def test_fine_tuned_predictions_on_arrays_frames_and_bags(client):
    rng = np.random.RandomState(0)
    X = rng.rand(60, 6).astype(np.float32)
    y = np.where(X[:, 0] > 0.5, "big", "small")
    clf = FineTunedClassifier(nn.Sequential(nn.Linear(6, 8), nn.ReLU()), max_epochs=2,
                              device="cpu", random_state=0).fit(X, y)
    dX = da.from_array(X, chunks=(20, 3))  # split columns are joined per block
    ddf = dd.from_pandas(pd.DataFrame(X, columns=[f"x{i}" for i in range(6)]), npartitions=3)

    labels = clf.predict(dX)
    assert labels.shape == (60,) and labels.dtype == clf.classes_.dtype
    np.testing.assert_array_equal(labels.compute(), clf.predict(X))
    np.testing.assert_allclose(clf.predict_proba(dX).compute(), clf.predict_proba(X),
                               rtol=1e-6)
    proba = clf.predict_proba(ddf).compute()
    assert list(proba.columns) == list(clf.classes_)
    np.testing.assert_allclose(proba.to_numpy(), clf.predict_proba(X), rtol=1e-6)
    np.testing.assert_array_equal(clf.predict(ddf).compute().to_numpy(), clf.predict(X))
    np.testing.assert_allclose(clf.transform(dX).compute(), clf.transform(X), rtol=1e-6)
    assert clf.predict(db.from_sequence(list(X), npartitions=3)).compute() == list(
        clf.predict(X))
    for models in held(client, "FineTunedClassifier").values():
        # predict, predict_proba and transform: one model, one load.
        assert [m["loads"] for m in models] == [1]

    Y = np.stack([X[:, 0] * 10, X[:, 1] - 3], axis=1)
    for target in (Y[:, 0], Y):
        reg = FineTunedRegressor(nn.Sequential(nn.Linear(6, 8), nn.ReLU()), max_epochs=2,
                                 device="cpu", random_state=0).fit(X, target)
        lazy = reg.predict(dX)
        assert lazy.shape == target.shape and lazy.dtype == np.float64
        np.testing.assert_allclose(lazy.compute(), reg.predict(X), rtol=1e-6)


def test_a_worker_killed_mid_compute_gives_the_full_exact_result(client, resnet, images):
    X = da.from_array(images, chunks=(4, 16, 16, 3))  # 24 partitions
    expected = np.concatenate([resnet.transform(images[i:i + 4]) for i in range(0, 96, 4)])
    lazy = resnet.transform(X)
    (persisted,) = client.persist([lazy])
    parts = distributed.futures_of(persisted)  # one Future per partition
    victim = sorted(client.scheduler_info()["workers"])[0]
    deadline = time.monotonic() + 120
    while not any(victim in holders for holders in client.who_has(parts).values()):
        assert time.monotonic() < deadline, "the victim computed nothing"
        time.sleep(0.02)
    done_before = sum(f.status == "finished" for f in parts)
    # os._exit in the worker process, from a thread: the worker dies between
    # two batches, as a crashed or preempted machine would; its nanny starts
    # a fresh one.
    threading.Thread(target=_kill, args=(client, victim), daemon=True).start()
    result = persisted.compute()
    np.testing.assert_array_equal(result, expected)
    assert done_before < len(parts), "the kill came after the end of the computation"
    client.wait_for_workers(2, timeout=60)
    assert victim not in client.scheduler_info()["workers"]


def _kill(client, address):
    try:
        client.run(os._exit, 1, workers=[address])
    except Exception:  # the worker's comm closes as it dies
        pass


def test_a_rerun_with_a_shared_cache_recomputes_nothing(client, resnet, image_files, tmp_path):
    paths, _ = image_files
    column = dd.from_pandas(pd.Series(paths), npartitions=3)
    cached = pickle.loads(pickle.dumps(resnet)).set_params(cache=str(tmp_path))
    first = cached.transform(column).compute().to_numpy()
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert any(name.endswith(".safetensors") for name in files)
    payload = pickle.dumps(cached, protocol=5)  # as it is shipped

    # Workers that start afresh (here: that free what they hold).
    del cached
    client.run(release_models)
    assert held(client) == {w: [] for w in client.scheduler_info()["workers"]}

    # The same model again: every partition is read from the cache, so no
    # worker builds an engine.
    again = pickle.loads(payload)
    np.testing.assert_array_equal(again.transform(column).compute().to_numpy(), first)
    holding = _holding(client, payload)
    assert holding and all(m["engines"] == [] for ms in holding.values() for m in ms)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == files


def _holding(client, payload):
    """What the workers hold of the model pickled as ``payload``."""
    import hashlib

    digest = hashlib.blake2b(payload, digest_size=20).hexdigest()
    return {w: [m for m in ms if m["digest"] == digest] for w, ms in held(client).items()
            if any(m["digest"] == digest for m in ms)}


def test_local_scheduler_runs_on_the_estimator_itself(client):
    import dask

    X = np.random.RandomState(0).rand(10, 3).astype(np.float32)
    pft = PretrainedFeatureTransformer(nn.Linear(3, 2), device="cpu").fit(X)
    with dask.config.set(scheduler="threads"):
        out = pft.transform(da.from_array(X, chunks=4)).compute()
    np.testing.assert_array_equal(out, pft.transform(X))
    assert worker_models() == []  # nothing was shipped from this process


def test_unsupported_collections_and_unfitted_estimators_are_refused(client):
    import dask

    X = np.ones((4, 3), dtype=np.float32)
    pft = PretrainedFeatureTransformer(nn.Linear(3, 2), device="cpu")
    with pytest.raises(NotFittedError):
        pft.transform(da.from_array(X))
    pft.fit(X)
    with pytest.raises(TypeError, match="got a Dask Delayed"):
        pft.transform(dask.delayed(X))
    with pytest.raises(ValueError, match="0-dimensional"):
        pft.transform(da.from_array(np.float32(1.0)))

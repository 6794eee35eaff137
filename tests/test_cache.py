"""The feature cache and the in-process weights cache, as a search uses them."""

import atexit
import errno
import os
import pickle
import shutil
import sys
import tempfile
import tracemalloc

import joblib
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.svm import SVC
from torch import nn

from sktransfer import PretrainedFeatureTransformer
from sktransfer.backbones import Backbone, load_backbone
from sktransfer.backbones import loaded as loaded_backbones
from sktransfer.backbones import torchvision as tv_source
from sktransfer.backbones.preprocess import TensorPreprocess
from sktransfer.feature_cache import NAMESPACE, FeatureCache, output_key, sample_digests
from sktransfer.feature_cache import store as cache_store
from sktransfer.feature_cache.keys import weights_digest
from sktransfer.inputs import as_samples

from conftest import stable_checks, tiny_mlp  # noqa: E402

# Rows each forward pass of a CountingNet saw, across every copy of it.
SEEN = []


class CountingNet(nn.Module):
    """A real network that records how many rows it embedded."""

    def __init__(self, n_in=4, n_out=3):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(n_in, n_out)

    def forward(self, x):
        SEEN.append(len(x))
        return torch.tanh(self.linear(x))


def counting_backbone():
    # Given as a Backbone with its width known, fit runs no probe batch, so
    # every row counted is one that transform had to embed.
    return Backbone(CountingNet(), TensorPreprocess(), "tensor", "counting", out_dim=3)


def tabular(n=60, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    return X, y


def resnet(**params):
    params = {"backbone": "torchvision:resnet18", "weights": None, "image_size": 32,
              "random_state": 0, "device": "cpu", **params}
    return PretrainedFeatureTransformer(**params)


def stored_rows(cache_dir):
    """Sample rows held by all chunks under a cache directory."""
    return sum(len(load_file(path)["digests"]) for path in chunk_files(cache_dir))


def chunk_files(cache_dir):
    return sorted(str(p) for p in cache_dir.rglob("*.safetensors"))


def entry_files(cache_dir):
    """Every file under the feature cache: entries, and anything left beside them."""
    return sorted(p for p in cache_dir.rglob("*") if p.is_file() and NAMESPACE in str(p))


@pytest.fixture(autouse=True)
def fresh_counts():
    SEEN.clear()
    yield
    SEEN.clear()


def test_grid_search_embeds_each_distinct_sample_once(tmp_path):
    X, y = tabular()
    grid = {"svc__C": [0.1, 1, 10]}
    pipe = make_pipeline(PretrainedFeatureTransformer(counting_backbone(), cache=tmp_path),
                         SVC())
    cached = GridSearchCV(pipe, grid, cv=3).fit(X, y)
    assert sum(SEEN) == len(X)  # 9 fits, 9 test folds and the refit: 60 rows in all

    SEEN.clear()
    plain = GridSearchCV(make_pipeline(PretrainedFeatureTransformer(counting_backbone()),
                                       SVC()), grid, cv=3).fit(X, y)
    assert sum(SEEN) == 10 * len(X)  # every fit embeds all of its rows again
    np.testing.assert_array_equal(cached.cv_results_["mean_test_score"],
                                  plain.cv_results_["mean_test_score"])
    assert cached.best_params_ == plain.best_params_


def test_repeated_samples_are_embedded_once(tmp_path):
    X, _ = tabular(10)
    X = np.concatenate([X, X[::-1], X[:3]])
    pft = PretrainedFeatureTransformer(counting_backbone(), cache=tmp_path).fit(X)
    out = pft.transform(X)
    assert sum(SEEN) == 10
    expected = PretrainedFeatureTransformer(counting_backbone()).fit(X).transform(X)
    # Rows are computed in batches of another size here, so float rounding
    # differs in the last bits; a wrong row would be off by far more.
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


def test_cached_images_equal_fresh_embeddings_in_any_order(tmp_path, digits):
    X = digits[0][:40]
    fresh = resnet().fit(X).transform(X)
    pft = resnet(cache=tmp_path).fit(X[:25])
    cold = pft.transform(X[:25])
    order = np.random.RandomState(0).permutation(40)
    mixed = pft.transform(X[order])  # 25 stored, 15 new, shuffled
    np.testing.assert_allclose(cold, fresh[:25], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mixed, fresh[order], rtol=1e-4, atol=1e-5)
    assert stored_rows(tmp_path) == 40


@pytest.mark.parametrize("change", [
    {"random_state": 1},
    {"image_size": 40},
    {"layers": ["layer2"]},
    {"layers": ["layer2"], "pooling": "max"},
    {"precision": "bf16"},
])
def test_a_change_that_alters_the_output_is_a_miss(tmp_path, digits, change):
    X = digits[0][:12]
    base = {"layers": ["layer2"]} if "pooling" in change else {}
    first = resnet(cache=tmp_path, **base).fit(X).transform(X)
    changed = resnet(cache=tmp_path, **{**base, **change}).fit(X).transform(X)
    expected = resnet(**{**base, **change}).fit(X).transform(X)
    assert first.shape != changed.shape or not np.allclose(first, changed)
    np.testing.assert_allclose(changed, expected, rtol=1e-4, atol=1e-4)


def test_settings_that_do_not_change_the_output_hit(tmp_path, digits):
    X = digits[0][:12]
    resnet(cache=tmp_path, batch_size=4).fit(X).transform(X)
    files = chunk_files(tmp_path)
    resnet(cache=tmp_path, batch_size=5, verbose=False).fit(X).transform(X)
    assert chunk_files(tmp_path) == files


def test_weights_file_rewritten_in_place_is_a_miss(tmp_path):
    X, _ = tabular(8)
    path = tmp_path / "weights.pt"
    net = nn.Sequential(nn.Linear(4, 3))
    torch.save(net.state_dict(), path)
    cache = tmp_path / "cache"
    before = PretrainedFeatureTransformer(net, weights=str(path), cache=cache).fit(X)
    before = before.transform(X)
    with torch.no_grad():
        net[0].weight.mul_(-2.0)
    torch.save(net.state_dict(), path)  # same name, new weights
    after = PretrainedFeatureTransformer(net, weights=str(path), cache=cache).fit(X)
    after = after.transform(X)
    expected = PretrainedFeatureTransformer(net, weights=str(path)).fit(X).transform(X)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, expected, rtol=1e-6)


def test_same_weights_under_another_name_hit(tmp_path):
    X, _ = tabular(8)
    net = nn.Sequential(nn.Linear(4, 3))
    for name in ("a.pt", "b.pt"):
        torch.save(net.state_dict(), tmp_path / name)
    cache = tmp_path / "cache"
    PretrainedFeatureTransformer(net, weights=str(tmp_path / "a.pt"), cache=cache).fit(X) \
        .transform(X)
    files = chunk_files(cache)
    PretrainedFeatureTransformer(net, weights=str(tmp_path / "b.pt"), cache=cache).fit(X) \
        .transform(X)
    assert chunk_files(cache) == files


def test_image_file_rewritten_in_place_is_a_miss(tmp_path, digits):
    images = digits[0]
    paths = []
    for i in range(6):
        paths.append(str(tmp_path / f"digit_{i}.png"))
        Image.fromarray(images[i]).resize((32, 32)).save(paths[-1])
    cache = tmp_path / "cache"
    pft = resnet(cache=cache).fit(paths)
    before = pft.transform(paths)
    Image.fromarray(images[100]).resize((32, 32)).save(paths[2])  # same path, new picture
    after = pft.transform(paths)
    expected = resnet().fit(paths).transform(paths)
    np.testing.assert_allclose(after, expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(before[2], after[2])
    np.testing.assert_array_equal(np.delete(before, 2, 0), np.delete(after, 2, 0))


def test_pil_images_are_keyed_by_pixels_and_mode(tmp_path, digits):
    images = [Image.fromarray(img).resize((32, 32)) for img in digits[0][:6]]
    pft = resnet(cache=tmp_path).fit(images)
    first = pft.transform(images)
    files = chunk_files(tmp_path)
    copies = [img.copy() for img in images]  # new objects, same pixels: hits
    np.testing.assert_array_equal(pft.transform(copies), first)
    assert chunk_files(tmp_path) == files
    d_gray = sample_digests(as_samples(images[:1], "image"))
    d_rgb = sample_digests(as_samples([images[0].convert("RGB")], "image"))
    assert d_gray != d_rgb


def test_strings_are_keyed_by_content(tmp_path):
    texts = ["a cat", "a dog", "a cat", "à cat"]
    digests = sample_digests(as_samples(texts, "text"))
    assert digests[0] == digests[2] and len(set(digests)) == 3

    computed = []

    def embed(samples):
        computed.extend(samples.data)
        return np.array([[len(s), s.count("a")] for s in samples.data], dtype=np.float32)

    cache = FeatureCache(tmp_path)
    out = cache.embed(as_samples(texts, "text"), "text-key", embed)
    again = cache.embed(as_samples(["a dog", "a bird"], "text"), "text-key", embed)
    assert computed == ["a cat", "a dog", "à cat", "a bird"]
    np.testing.assert_array_equal(out[[0, 2]], [[5, 2], [5, 2]])
    np.testing.assert_array_equal(again, [[5, 1], [6, 1]])


def test_text_encoder_reuses_stored_embeddings(tmp_path, minilm_path):
    texts = ["the printer is jammed", "my invoice is wrong", "reset my password"]
    pft = PretrainedFeatureTransformer("hf:" + minilm_path, device="cpu", cache=tmp_path)
    first = pft.fit(texts).transform(texts)
    files = chunk_files(tmp_path)
    again = pft.transform(texts[::-1])
    np.testing.assert_allclose(again, first[::-1], rtol=1e-5, atol=1e-6)
    assert chunk_files(tmp_path) == files


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped value"])
def test_a_corrupt_entry_is_recomputed_not_trusted(tmp_path, damage):
    X, _ = tabular(10)
    expected = PretrainedFeatureTransformer(counting_backbone()).fit(X).transform(X)
    pft = PretrainedFeatureTransformer(counting_backbone(), cache=tmp_path).fit(X)
    pft.transform(X)
    (path,) = chunk_files(tmp_path)
    blob = open(path, "rb").read()
    if damage == "garbage":
        blob = b"not a pickle" * 10
    elif damage == "truncated":
        blob = blob[: len(blob) // 2]
    else:
        # One float of the stored features changed: the file still loads.
        stored = np.asarray(expected[-1], dtype=np.float32).tobytes()
        assert blob.count(stored) == 1
        blob = blob.replace(stored, np.float32(9.0).tobytes() + stored[4:])
    with open(path, "wb") as fh:
        fh.write(blob)
    SEEN.clear()
    # A fresh process has not read the entry yet; forget what this one knows.
    cache_store._INDEXES.clear()

    out = PretrainedFeatureTransformer(counting_backbone(), cache=tmp_path).fit(X).transform(X)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert sum(SEEN) == 10
    assert stored_rows(tmp_path) == 10  # the damaged entry was replaced by a sound one


def _transform_in_worker(net, cache_dir, X, order):
    pft = PretrainedFeatureTransformer(net, cache=cache_dir)
    return pft.fit(X).transform(X[order])


def test_parallel_workers_share_one_cache_safely(tmp_path):
    X, _ = tabular(200)
    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh())
    orders = [np.random.RandomState(i).permutation(len(X))[:150] for i in range(6)]
    results = joblib.Parallel(n_jobs=2, backend="loky")(
        joblib.delayed(_transform_in_worker)(net, str(tmp_path), X, order) for order in orders)
    full = _transform_in_worker(net, None, X, np.arange(len(X)))
    for order, out in zip(orders, results):
        # Batches of other sizes round the last bits differently.
        np.testing.assert_allclose(out, full[order], rtol=0, atol=1e-5)
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()
                 and not p.name.endswith(".safetensors") and p.name != ".gitignore"]
    assert leftovers == []  # no temporary or torn files


def test_joblib_memory_options_are_used(tmp_path, digits):
    X = digits[0][:10]
    memory = joblib.Memory(str(tmp_path), mmap_mode="r", compress=False, verbose=0)
    pft = resnet(cache=memory).fit(X)
    np.testing.assert_array_equal(pft.transform(X), pft.transform(X))
    assert chunk_files(tmp_path)
    # location=None turns caching off, as for joblib.Memory itself.
    off = resnet(cache=joblib.Memory(None)).fit(X).transform(X)
    np.testing.assert_allclose(off, pft.transform(X), rtol=1e-4, atol=1e-5)


def test_memory_reduce_size_and_clear_are_honoured(tmp_path):
    X, _ = tabular(10)
    memory = joblib.Memory(str(tmp_path), verbose=0)
    pft = PretrainedFeatureTransformer(counting_backbone(), cache=memory).fit(X)
    pft.transform(X)
    memory.reduce_size(items_limit=0)
    assert chunk_files(tmp_path) == []
    SEEN.clear()
    pft.transform(X)
    assert sum(SEEN) == 10  # embedded again, not read from a deleted entry
    memory.clear(warn=False)
    SEEN.clear()
    pft.transform(X)
    assert sum(SEEN) == 10


class _TouchWhenUnpickled:
    """A pickle payload: unpickling it creates ``path`` (as hostile code would run)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_tampered_entry_runs_no_code_and_is_recomputed(tmp_path):
    X, _ = tabular(10)
    expected = PretrainedFeatureTransformer(counting_backbone()).fit(X).transform(X)
    cache_dir = tmp_path / "cache"
    PretrainedFeatureTransformer(counting_backbone(), cache=cache_dir).fit(X).transform(X)
    marker = tmp_path / "code-ran"
    payload = pickle.dumps(_TouchWhenUnpickled(str(marker)))
    pickle.loads(payload)  # the payload is live: loading it does run code
    assert marker.exists()
    marker.unlink()
    for path in entry_files(cache_dir):  # whatever file the entry is, it now holds a pickle
        path.write_bytes(payload)
    cache_store._INDEXES.clear()
    SEEN.clear()

    out = PretrainedFeatureTransformer(counting_backbone(), cache=cache_dir).fit(X).transform(X)
    assert not marker.exists()
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert sum(SEEN) == 10
    assert stored_rows(cache_dir) == 10  # replaced by a sound entry


def _rows_sum(samples):
    return samples.data.sum(axis=1, keepdims=True).astype(np.float32)


def test_an_interrupted_embedding_keeps_its_finished_blocks(tmp_path):
    X = np.arange(40.0).reshape(20, 2)
    calls = []

    def interrupted_at_third_block(samples):
        calls.append(len(samples))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return _rows_sum(samples)

    cache = FeatureCache(tmp_path, block_size=4)
    with pytest.raises(KeyboardInterrupt):
        cache.embed(as_samples(X, "tensor"), "key", interrupted_at_third_block)
    assert calls == [4, 4, 4]  # memory is bounded by a block
    assert entry_files(tmp_path) and stored_rows(tmp_path) == 8

    cache_store._INDEXES.clear()  # the rerun, as in a new session
    rerun = []

    def counted(samples):
        rerun.append(len(samples))
        return _rows_sum(samples)

    out = FeatureCache(tmp_path, block_size=4).embed(as_samples(X, "tensor"), "key", counted)
    assert sum(rerun) == 12  # only what the interrupted run had not finished
    np.testing.assert_array_equal(out, _rows_sum(as_samples(X, "tensor")))


class _RecordingSafeOpen:
    """safetensors' safe_open, noting which tensors are read from which file."""

    def __init__(self, real, reads):
        self.real, self.reads = real, reads

    def __call__(self, path, *args, **kwargs):
        handle = self.real(path, *args, **kwargs)
        reads = self.reads

        class Handle:
            def __enter__(self):
                self.inner = handle.__enter__()
                return self

            def __exit__(self, *exc):
                return handle.__exit__(*exc)

            def get_tensor(self, name):
                reads.append((os.fspath(path), name))
                return self.inner.get_tensor(name)

            def get_slice(self, name):
                inner = self.inner.get_slice(name)

                class Slice:  # its shape is header only; indexing it reads data
                    def __getitem__(self, item):
                        reads.append((os.fspath(path), name))
                        return inner[item]

                    def __getattr__(self, attr):
                        return getattr(inner, attr)

                return Slice()

            def __getattr__(self, name):
                return getattr(self.inner, name)

        return Handle()


def test_a_fresh_lookup_reads_features_only_from_the_chunk_holding_them(tmp_path,
                                                                        monkeypatch):
    X = np.arange(40.0).reshape(20, 2)
    FeatureCache(tmp_path, block_size=4).embed(as_samples(X, "tensor"), "key", _rows_sum)
    assert len(chunk_files(tmp_path)) == 5
    cache_store._INDEXES.clear()  # a fresh process
    reads = []
    monkeypatch.setattr(cache_store, "safe_open",
                        _RecordingSafeOpen(cache_store.safe_open, reads))

    def never(samples):
        raise AssertionError("a stored row was computed again")

    out = FeatureCache(tmp_path).embed(as_samples(X[13:14], "tensor"), "key", never)
    np.testing.assert_array_equal(out, [[X[13].sum()]])
    feature_reads = {path for path, name in reads if name == "features"}
    assert len(feature_reads) == 1  # one chunk of five
    (path,) = feature_reads
    assert X[13].sum() in load_file(path)["features"]
    assert len(load_file(path)["features"]) == 4


def test_a_fresh_lookup_keeps_a_compact_index_of_numpy_arrays(tmp_path):
    # A search in a new session looks a few samples up in a cache of many:
    # what it keeps (and the peak while it reads the digests) must be a few
    # bytes of arrays per stored sample, not Python objects (~170 B each).
    n = 20_000
    X = np.arange(float(n)).reshape(n, 1)
    FeatureCache(tmp_path, block_size=2_000).embed(as_samples(X, "tensor"), "key", _rows_sum)
    FeatureCache(tmp_path).embed(as_samples(X[:1], "tensor"), "key", _rows_sum)  # warm up
    cache_store._INDEXES.clear()  # a fresh process

    def never(samples):
        raise AssertionError("a stored row was computed again")

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        out = FeatureCache(tmp_path).embed(as_samples(X[7:8], "tensor"), "key", never)
        kept, peak = (size - before for size in tracemalloc.get_traced_memory())
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(out, [[7.0]])
    (index,) = cache_store._INDEXES.values()
    arrays = [value for value in index.sorted if isinstance(value, np.ndarray)]
    assert sum(len(a) for a in arrays) == 3 * n  # digests, chunk numbers, rows
    assert sum(a.nbytes for a in arrays) < 64 * n
    assert len(index.chunks) == 10  # the only other record is one per chunk
    assert kept < 64 * n
    assert peak < 128 * n


def test_a_digest_stored_in_several_chunks_is_found(tmp_path):
    # Workers that embed overlapping samples write overlapping chunks; the
    # sorted index then holds equal digests, which lookups must still find,
    # whether the chunks are merged together (a fresh process) or one by one.
    X = np.arange(40.0).reshape(20, 2)

    def store(rows):
        samples = as_samples(X[rows], "tensor")
        index = cache_store.chunk_index(os.path.join(tmp_path, "joblib", NAMESPACE), "key")
        index.store(sample_digests(samples), _rows_sum(samples))

    def never(samples):
        raise AssertionError("a stored row was computed again")

    store(np.arange(0, 12))
    store(np.arange(6, 20))
    store(np.arange(10, 14)[::-1])
    for fresh in (True, False):
        if fresh:
            cache_store._INDEXES.clear()
        order = np.random.RandomState(0).permutation(20)
        out = FeatureCache(tmp_path).embed(as_samples(X[order], "tensor"), "key", never)
        np.testing.assert_array_equal(out, _rows_sum(as_samples(X[order], "tensor")))
    store(np.arange(3, 9))  # merged into a populated index
    out = FeatureCache(tmp_path).embed(as_samples(X, "tensor"), "key", never)
    np.testing.assert_array_equal(out, _rows_sum(as_samples(X, "tensor")))


def test_digests_that_share_their_first_half_are_told_apart(tmp_path):
    # The index sorts by the first 8 bytes when it can; digests equal there
    # (rare, but a large cache may hold two) must still be found, each at
    # its own row.
    digests = [bytes(8) + bytes([i]) * 8 for i in (3, 1, 2)] + [b"\x01" * 16]
    index = cache_store.chunk_index(os.path.join(tmp_path, "joblib", NAMESPACE), "key")
    index.store(digests, np.arange(4.0).reshape(4, 1))
    index.refresh()
    numbers, rows = index.locate(digests[::-1] + [bytes(8) + b"\x04" * 8])
    assert numbers.tolist()[:4] == [numbers[0]] * 4 and numbers[0] >= 0
    assert rows.tolist()[:4] == [3, 2, 1, 0]
    assert numbers[4] == -1  # not stored


def _fail_in_cache(monkeypatch, error):
    """Make every file the cache opens for writing fail with ``error``."""
    real_open, real_fsync = os.open, os.fsync
    if error == errno.ENOSPC:
        # The disk fills while the bytes are flushed: the temporary file exists.
        def fsync(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "fsync", fsync)
        return

    def open_(path, flags, *args, **kwargs):
        if NAMESPACE in os.fspath(path) and flags & os.O_CREAT:
            raise OSError(error, os.strerror(error), path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EROFS])
def test_a_failed_write_warns_leaves_nothing_and_returns_right_results(tmp_path,
                                                                       monkeypatch, error):
    X, _ = tabular(10)
    expected = PretrainedFeatureTransformer(counting_backbone()).fit(X).transform(X)
    pft = PretrainedFeatureTransformer(counting_backbone(), cache=tmp_path).fit(X)
    with monkeypatch.context() as patch:
        _fail_in_cache(patch, error)
        with pytest.warns(UserWarning, match="feature cache could not be written"):
            out = pft.transform(X)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert entry_files(tmp_path) == []  # no partial or temporary file
    pft.transform(X)  # room again: stored now
    assert stored_rows(tmp_path) == 10


def test_a_killed_writers_temporary_file_is_ignored_then_removed_when_old(tmp_path):
    X = np.arange(12.0).reshape(6, 2)
    cache = FeatureCache(tmp_path)
    cache.embed(as_samples(X[:3], "tensor"), "key", _rows_sum)
    (chunk,) = chunk_files(tmp_path)
    key_dir = os.path.dirname(os.path.dirname(chunk))
    old = os.path.join(key_dir, ".tmp-" + "0" * 32 + "-killed-long-ago")
    new = os.path.join(key_dir, ".tmp-" + "1" * 32 + "-still-writing")
    for path in (old, new):
        with open(path, "wb") as fh:
            fh.write(b"half a chunk")
    os.utime(old, (0, 0))
    cache_store._INDEXES.clear()

    out = FeatureCache(tmp_path).embed(as_samples(X, "tensor"), "key", _rows_sum)
    np.testing.assert_array_equal(out, _rows_sum(as_samples(X, "tensor")))
    assert not os.path.exists(old) and os.path.exists(new)


def test_the_key_tells_architectures_with_the_same_weights_apart():
    relu = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    tanh = nn.Sequential(nn.Linear(3, 2), nn.Tanh())
    tanh.load_state_dict(relu.state_dict())

    def key(module):
        return output_key(load_backbone(module), layers=None, pooling="avg", precision=None)

    assert weights_digest(relu) == weights_digest(tanh)
    assert key(relu) != key(tanh)
    assert key(relu) == key(relu) == key(pickle.loads(pickle.dumps(relu)))


NET_SOURCE = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x):
        return {}(self.linear(x))
'''


def _import_net(tmp_path, monkeypatch, activation):
    """Class ``Net`` of module ``user_net``, its forward using ``activation``."""
    import importlib.util

    path = tmp_path / "user_net.py"
    path.write_text(NET_SOURCE.format(activation))
    spec = importlib.util.spec_from_file_location("user_net", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "user_net", module)  # as an import does
    spec.loader.exec_module(module)
    return module.Net


def test_the_key_tells_forwards_of_one_class_name_apart(tmp_path, monkeypatch):
    # The user edits forward between two sessions: same module, class name,
    # parameters and weights.
    def key(module):
        return output_key(load_backbone(module), layers=None, pooling="avg", precision=None)

    first = _import_net(tmp_path, monkeypatch, "torch.relu")()
    first_key = key(first)
    second = _import_net(tmp_path, monkeypatch, "torch.sigmoid")()
    second.load_state_dict(first.state_dict())
    assert repr(first) == repr(second)
    assert key(second) != first_key
    assert key(second) == key(second)


def _mean_pixel(samples):
    batch = samples.__getitems__(list(range(len(samples))))
    return np.array([[float(img.float().mean())] for img in batch], dtype=np.float32)


def test_a_file_rewritten_while_embedded_does_not_poison_the_cache(tmp_path, digits):
    paths = [str(tmp_path / f"digit_{i}.png") for i in range(3)]
    for i, path in enumerate(paths):
        Image.fromarray(digits[0][i]).save(path)
    original = open(paths[1], "rb").read()
    cache_dir = tmp_path / "cache"

    def rewriting(samples):
        # Another program replaces the picture after it was hashed.
        Image.fromarray(digits[0][100]).save(paths[1])
        return _mean_pixel(samples)

    expected = _mean_pixel(as_samples(paths, "image"))
    first = FeatureCache(cache_dir).embed(as_samples(paths, "image"), "key", rewriting)
    np.testing.assert_array_equal(first, expected)  # the bytes that were hashed

    with open(paths[1], "wb") as fh:  # the old picture again
        fh.write(original)
    cache_store._INDEXES.clear()
    again = FeatureCache(cache_dir).embed(as_samples(paths, "image"), "key", _mean_pixel)
    np.testing.assert_array_equal(again, expected)


def test_a_bad_cache_is_named_at_fit(digits):
    with pytest.raises(TypeError, match="cache must be None, a directory path or a "
                                        "joblib.Memory; got a int"):
        resnet(cache=42).fit(digits[0][:4])


def test_a_fitted_pipeline_with_a_cache_pickles(tmp_path, digits):
    X, y = digits[0][:30], digits[1][:30]
    pipe = make_pipeline(resnet(cache=tmp_path / "cache"), SVC()).fit(X, y)
    files = chunk_files(tmp_path / "cache")
    joblib.dump(pipe, tmp_path / "model.joblib")
    loaded = joblib.load(tmp_path / "model.joblib")
    np.testing.assert_array_equal(loaded.predict(X), pipe.predict(X))
    assert chunk_files(tmp_path / "cache") == files


# -- the in-process weights cache ----------------------------------------


def test_weights_file_is_read_once_per_process(tmp_path, monkeypatch, digits):
    loaded_backbones.clear()
    model = tv_source.load("resnet18", weights=None, image_size=32)
    path = tmp_path / "resnet18.pt"
    torch.save(model.module.state_dict(), path)
    reads = []
    real = tv_source.load_state_dict_file

    def counted(p):
        reads.append(p)
        return real(p)

    monkeypatch.setattr(tv_source, "load_state_dict_file", counted)
    X, y = digits[0][:30], digits[1][:30]
    pipe = make_pipeline(resnet(weights=str(path), cache=tmp_path / "cache"), SVC())
    GridSearchCV(pipe, {"svc__C": [1, 10]}, cv=2).fit(X, y)
    assert len(reads) == 1  # 4 fits and the refit, one read

    with torch.no_grad():
        model.module.fc = nn.Identity()
        next(model.module.parameters()).mul_(2.0)
    torch.save(model.module.state_dict(), path)  # rewritten in place: read again
    resnet(weights=str(path)).fit(X)
    assert len(reads) == 2


def test_clones_never_share_a_module(digits):
    X = digits[0][:8]
    a, b = resnet().fit(X), resnet().fit(X)
    assert a.backbone_.module is not b.backbone_.module
    first = b.transform(X)
    with torch.no_grad():
        for p in a.backbone_.module.parameters():
            p.zero_()
    np.testing.assert_array_equal(b.transform(X), first)
    assert not np.allclose(a.transform(X), first)


def test_random_weights_without_a_seed_differ_per_fit(digits):
    X = digits[0][:8]
    a = resnet(random_state=None).fit(X).transform(X)
    b = resnet(random_state=None).fit(X).transform(X)
    assert not np.allclose(a, b)


def test_weights_digest_follows_training_steps():
    net = nn.Linear(3, 2)
    digest = weights_digest(net)
    assert weights_digest(pickle.loads(pickle.dumps(net))) == digest
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(torch.ones(4, 3)).sum().backward()
    opt.step()
    assert weights_digest(net) != digest


@pytest.mark.gpu
def test_gpu_memory_is_released_between_fits_of_a_search(tmp_path, digits):
    X, y = digits[0][:40], digits[1][:40]
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    pipe = make_pipeline(resnet(device="cuda", cache=tmp_path), SVC())
    GridSearchCV(pipe, {"svc__C": [1, 10]}, cv=2).fit(X, y)
    # Nothing of the networks stays on the GPU once the search is done.
    assert torch.cuda.memory_allocated() == before


_CHECKS_CACHE = tempfile.mkdtemp(prefix="sktransfer-checks-")
atexit.register(shutil.rmtree, _CHECKS_CACHE, True)


@stable_checks([PretrainedFeatureTransformer(tiny_mlp, random_state=0,
                                             cache=_CHECKS_CACHE)])
def test_sklearn_estimator_checks_with_a_cache(estimator, check):
    check(estimator)

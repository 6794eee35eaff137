"""The feature cache and the in-process weights cache, as a search uses them."""

import atexit
import os
import pickle
import shutil
import tempfile

import joblib
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.svm import SVC
from sklearn.utils.estimator_checks import parametrize_with_checks
from torch import nn

from sktransfer import PretrainedFeatureTransformer
from sktransfer import _weights_cache
from sktransfer.backbones import Backbone
from sktransfer.backbones import torchvision as tv_source
from sktransfer.backbones.preprocess import TensorPreprocess
from sktransfer.cache import NAMESPACE, FeatureCache, sample_digests
from sktransfer.inputs import as_samples

from conftest import tiny_mlp  # noqa: E402

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
    memory = joblib.Memory(str(cache_dir), verbose=0)
    store = memory.store_backend
    total = 0
    for key in os.listdir(os.path.join(store.location, NAMESPACE)):
        for chunk in os.listdir(os.path.join(store.location, NAMESPACE, key)):
            total += len(store.load_item([NAMESPACE, key, chunk], verbose=0)["digests"])
    return total


def chunk_files(cache_dir):
    return sorted(str(p) for p in cache_dir.rglob("output.pkl"))


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
    np.testing.assert_allclose(out, expected, rtol=1e-6)


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
    from sktransfer import cache as cache_module
    cache_module._INDEXES.clear()

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
        np.testing.assert_allclose(out, full[order], rtol=1e-6)
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()
                 and p.name not in ("output.pkl", ".gitignore")]
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
    _weights_cache.clear()
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
    digest = _weights_cache.weights_digest(net)
    assert _weights_cache.weights_digest(pickle.loads(pickle.dumps(net))) == digest
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(torch.ones(4, 3)).sum().backward()
    opt.step()
    assert _weights_cache.weights_digest(net) != digest


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


@parametrize_with_checks([PretrainedFeatureTransformer(tiny_mlp, random_state=0,
                                                       cache=_CHECKS_CACHE)])
def test_sklearn_estimator_checks_with_a_cache(estimator, check):
    check(estimator)

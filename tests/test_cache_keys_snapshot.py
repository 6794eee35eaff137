"""The feature cache never serves a wrong number, even from a shared or hostile directory.

What users rely on: the key and the numbers stored under it come from the
same model (a model changed after its engine was built stores its new
numbers under its new key, and another estimator that truly has those
weights is served the right numbers); the key covers every attribute and
buffer that changes the output; a value the key cannot encode is refused
by name, never keyed loosely; keys are the same in every process; no
weights are hashed per call; the per-process index stays bounded; and an
entry planted in a shared cache directory (a FIFO, a symbolic link, a
pickle) neither hangs, nor deletes files elsewhere, nor runs code.
"""

import copy
import functools
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from torch import nn

import sktransfer.feature_cache as feature_cache
from sktransfer import PretrainedFeatureTransformer
from sktransfer.backbones import load_backbone
from sktransfer.feature_cache import NAMESPACE, FeatureCache, module_fingerprint, output_key
from sktransfer.feature_cache import keys as cache_keys
from sktransfer.feature_cache import store as cache_store
from sktransfer.inputs import as_samples

X = np.random.RandomState(0).rand(12, 4).astype(np.float32)


class Scaled(nn.Module):
    """A network whose output depends on a plain attribute and a non-persistent buffer."""

    def __init__(self, scale=1.0, shift=0.0):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)
        self.scale = scale
        self.register_buffer("shift", torch.full((3,), shift), persistent=False)

    def forward(self, x):
        return self.fc(x) * self.scale + self.shift


def uncached(module):
    """What an estimator of ``module`` gives with no cache at all."""
    return PretrainedFeatureTransformer(copy.deepcopy(module), device="cpu").fit(X).transform(X)


def chunk_paths(cache_dir):
    return sorted((cache_dir / "joblib" / NAMESPACE).glob("*/*/features.safetensors"))


@pytest.fixture(autouse=True)
def fresh_index():
    """Every test starts as a new process would: no index of the cache in memory."""
    cache_store._INDEXES.clear()
    yield
    cache_store._INDEXES.clear()


def _replace_fc(m):
    torch.manual_seed(5)
    m.fc = nn.Linear(4, 3)


def _assign_state(m):
    torch.manual_seed(5)
    m.load_state_dict({k: torch.randn_like(v) for k, v in m.state_dict().items()}, assign=True)


def _reassign_weight(m):
    torch.manual_seed(5)
    m.fc.weight = nn.Parameter(torch.randn(3, 4))


CHANGES = {"submodule replaced": _replace_fc, "load_state_dict assign": _assign_state,
           "parameter reassigned": _reassign_weight,
           "plain attribute": lambda m: setattr(m, "scale", 100.0)}


# -- one snapshot for the engine and the key ---------------------------------------------


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_a_changed_model_stores_its_new_numbers_under_its_new_key(tmp_path, change):
    pft = PretrainedFeatureTransformer(Scaled(), device="cpu", cache=str(tmp_path)).fit(X)
    before = pft.transform(X)
    change(pft.backbone_.module)
    after = pft.transform(X)
    truth = uncached(pft.backbone_.module)
    assert not np.allclose(truth, before)
    np.testing.assert_allclose(after, truth, rtol=1e-6, atol=1e-6)
    # Another estimator that truly has the new model, on the same directory.
    cache_store._INDEXES.clear()
    other = PretrainedFeatureTransformer(copy.deepcopy(pft.backbone_.module), device="cpu",
                                         cache=str(tmp_path)).fit(X)
    np.testing.assert_allclose(other.transform(X), truth, rtol=1e-6, atol=1e-6)


def test_no_weights_are_hashed_per_call(tmp_path, monkeypatch):
    hashed = []
    name = "tensor_bytes" if hasattr(cache_keys, "tensor_bytes") else "_tensor_bytes"
    tensor_bytes = getattr(cache_keys, name)
    monkeypatch.setattr(cache_keys, name, lambda t: hashed.append(1) or tensor_bytes(t))
    pft = PretrainedFeatureTransformer(Scaled(), device="cpu", cache=str(tmp_path)).fit(X)
    first = pft.transform(X)
    hashed_once = len(hashed)
    for _ in range(50):
        np.testing.assert_array_equal(pft.transform(X[:4]), first[:4])
    assert len(hashed) == hashed_once


# -- the key covers what changes the output ---------------------------------------------


def key_of(module):
    return output_key(load_backbone(module), layers=None, pooling="avg", precision=None)


@pytest.mark.parametrize("other", [Scaled(scale=100.0), Scaled(shift=1.0)],
                         ids=["plain attribute", "non-persistent buffer"])
def test_models_that_differ_only_in_an_attribute_or_buffer_share_no_entry(tmp_path, other):
    assert key_of(Scaled()) != key_of(other)
    PretrainedFeatureTransformer(Scaled(), device="cpu", cache=str(tmp_path)).fit(X).transform(X)
    cache_store._INDEXES.clear()
    served = PretrainedFeatureTransformer(other, device="cpu", cache=str(tmp_path)).fit(X)
    np.testing.assert_allclose(served.transform(X), uncached(other), rtol=1e-6, atol=1e-6)


class Unkeyable(Scaled):
    def __init__(self):
        super().__init__()
        self.opaque = object()  # no value of its own: only its address tells it apart


def test_a_value_with_no_stable_encoding_is_refused_by_name(tmp_path):
    with pytest.raises(feature_cache.UnkeyableValueError, match="'opaque'.*cache=None"):
        PretrainedFeatureTransformer(Unkeyable(), device="cpu", cache=str(tmp_path)).fit(X)
    # Without a cache nothing needs a key.
    PretrainedFeatureTransformer(Unkeyable(), device="cpu").fit(X).transform(X)


class Settings:
    def __init__(self):
        self.names = {"relu", "gelu", "tanh", "silu"}
        self.table = {"b": 2, "a": [1.5, None]}


def with_many_attributes():
    net = Scaled()
    net.settings = Settings()
    net.activation = torch.tanh
    net.pool = functools.partial(torch.amax, dim=1)
    net.transform = lambda x: x * 3
    net.dtype_ = torch.float16
    net.tags = frozenset({"x", "y", "z"})
    return net


def test_keys_are_the_same_in_every_process():
    here = module_fingerprint(with_many_attributes())
    script = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        from test_cache_keys_snapshot import with_many_attributes
        from sktransfer.feature_cache import module_fingerprint
        print(module_fingerprint(with_many_attributes()))
    """)
    # The two processes (each with its own hash seed) run side by side.
    procs = [subprocess.Popen([sys.executable, "-c", script, os.path.dirname(__file__)],
                              env=dict(os.environ, PYTHONHASHSEED=seed),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in ("1", "2")]
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 0, stderr[-3000:]
            assert stdout.strip() == here
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    changed = with_many_attributes()
    changed.settings.table["a"][0] = 2.5
    assert module_fingerprint(changed) != here


# -- the per-process index stays bounded --------------------------------------------------


def embed(samples):
    return samples.data.sum(axis=1, keepdims=True).astype(np.float32)


def test_the_per_process_index_is_bounded(tmp_path):
    cache = FeatureCache(str(tmp_path))
    samples = as_samples(X, "tensor")
    limit = getattr(cache_store, "MAX_INDEXES", 64)
    for i in range(limit + 20):
        cache.embed(samples, f"key-{i}", embed)
    assert len(cache_store._INDEXES) <= limit
    # A key whose index was dropped is indexed again from disk: its entries hit.
    calls = []
    out = cache.embed(samples, "key-0", lambda s: calls.append(1) or embed(s))
    assert calls == [] and np.allclose(out, embed(samples))


# -- hostile entries in a shared directory ------------------------------------------------


def _filled_cache(tmp_path):
    """The numbers of X, and the chunk files that hold them (found again by a new process)."""
    pft = PretrainedFeatureTransformer(Scaled(), device="cpu", cache=str(tmp_path)).fit(X)
    truth = pft.transform(X)
    paths = chunk_paths(tmp_path)
    assert paths
    cache_store._INDEXES.clear()
    return truth, paths


def _transform(cache_dir):
    """What a new estimator gives through the cache at ``cache_dir``."""
    pft = PretrainedFeatureTransformer(Scaled(), device="cpu", cache=str(cache_dir))
    return pft.fit(X).transform(X)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_a_fifo_planted_as_an_entry_neither_hangs_nor_is_served(tmp_path):
    truth, paths = _filled_cache(tmp_path / "cache")
    for path in paths:
        os.remove(path)
        os.mkfifo(path)
    # In another process: a read blocked on a FIFO would hold the whole interpreter.
    script = textwrap.dedent("""
        import sys
        import numpy as np
        sys.path.insert(0, sys.argv[1])
        from test_cache_keys_snapshot import X, Scaled
        from sktransfer import PretrainedFeatureTransformer
        pft = PretrainedFeatureTransformer(Scaled(), device="cpu", cache=sys.argv[2])
        np.save(sys.argv[3], pft.fit(X).transform(X))
    """)
    out = tmp_path / "out.npy"
    try:
        subprocess.run([sys.executable, "-c", script, os.path.dirname(__file__),
                        str(tmp_path / "cache"), str(out)], check=True, timeout=120,
                       capture_output=True)
    except subprocess.TimeoutExpired:
        pytest.fail("a transform hung on a FIFO in the cache directory")
    np.testing.assert_allclose(np.load(out), truth, rtol=1e-6)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="symbolic links")
def test_a_symlinked_entry_never_makes_the_cache_delete_files_elsewhere(tmp_path):
    truth, paths = _filled_cache(tmp_path / "cache")
    victims = []
    for i, path in enumerate(paths):
        victim = tmp_path / f"victim{i}"
        victim.mkdir()
        (victim / "features.safetensors").write_bytes(b"someone else's file")
        os.remove(path)
        os.rmdir(path.parent)
        os.symlink(victim, path.parent)
        victims.append(victim / "features.safetensors")
    out = _transform(tmp_path / "cache")
    np.testing.assert_allclose(out, truth, rtol=1e-6)
    assert all(v.read_bytes() == b"someone else's file" for v in victims)


class Planted:
    """Unpickling this would leave a file behind: the proof that code ran."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def test_a_pickle_planted_as_an_entry_runs_no_code(tmp_path):
    truth, paths = _filled_cache(tmp_path / "cache")
    sentinel = tmp_path / "code-ran"
    for path in paths:
        path.write_bytes(pickle.dumps({"features": Planted(str(sentinel))}))
        np.save(str(path.parent / "features.npy"),
                np.array([Planted(str(sentinel))], dtype=object), allow_pickle=True)
    out = _transform(tmp_path / "cache")
    np.testing.assert_allclose(out, truth, rtol=1e-6)
    assert not sentinel.exists()


def test_a_planted_entry_with_forged_numbers_needs_matching_checksums(tmp_path):
    truth, paths = _filled_cache(tmp_path / "cache")
    for path in paths:
        with safe_open(str(path), framework="np") as f:
            metadata = f.metadata()
        tensors = load_file(str(path))
        tensors["features"] = tensors["features"] + 1.0  # forged numbers, stale row checksums
        save_file(tensors, str(path), metadata=metadata)
    out = _transform(tmp_path / "cache")
    np.testing.assert_allclose(out, truth, rtol=1e-6)

"""The resident inference engine and its runtimes (torch, torch.compile, ONNX Runtime).

What users rely on: a fitted estimator builds its engine once and reuses it;
a refit, a change of weights or of a parameter rebuilds it; every runtime
gives the torch results (to float tolerance; int8 to quantization
tolerance), from many threads at once; ``runtime`` and ``quantize`` are
hyperparameters like the others (clone, search, pickle, ``.skt``); and a
combination that cannot run is refused with the fix in the message.
"""

import gc
import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from torch import nn

import sktransfer
from sktransfer import FineTunedClassifier, FineTunedRegressor, PretrainedFeatureTransformer
from sktransfer.engine import resident
from sktransfer.engine.runtimes import check_runtime

from conftest import count_calls, tiny_cnn
from test_threads import assert_threads_match_single_thread

RUNTIMES = ["torch", "compile", "onnx"]
WORDS = "the a cat dog sat on mat ran far big small red blue".split()


def sentences(n, seed=0):
    rng = np.random.RandomState(seed)
    return np.array([" ".join(rng.choice(WORDS, rng.randint(1, 20))) for _ in range(n)])


def cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def images():
    return np.random.RandomState(0).rand(24, 3, 12, 12).astype(np.float32)


@pytest.fixture
def builds(monkeypatch):
    """Count the engines built and the private copies of networks made."""
    return count_calls(monkeypatch, engines=(resident, "build_engine"),
                       copies=(resident, "private_copy"))


# -- residency ---------------------------------------------------------------------------

def test_a_second_call_builds_and_copies_nothing(builds, images):
    pft = PretrainedFeatureTransformer(tiny_cnn(), device="cpu").fit(images)
    first = pft.transform(images)
    built = dict(builds)
    assert built["engines"] == 1
    for _ in range(3):
        np.testing.assert_array_equal(pft.transform(images[:5]), first[:5])
    assert builds == built


def test_a_prediction_leaves_the_estimators_attributes_as_they_were(images):
    pft = PretrainedFeatureTransformer(tiny_cnn(), device="cpu").fit(images)
    before = dict(vars(pft))
    pft.transform(images)
    assert vars(pft).keys() == before.keys()
    assert all(vars(pft)[k] is v for k, v in before.items())


def test_refit_partial_fit_and_changed_weights_rebuild(builds):
    X = np.random.RandomState(0).rand(30, 5).astype(np.float32)
    y = np.arange(30) % 2
    clf = FineTunedClassifier(nn.Sequential(nn.Linear(5, 8), nn.ReLU()), max_epochs=1,
                              lr=0.1, random_state=0, device="cpu").fit(X, y)
    before = clf.predict_proba(X)
    assert builds["engines"] == 1
    clf.partial_fit(X, y)  # trains the same modules in place
    after = clf.predict_proba(X)
    assert builds["engines"] == 2 and not np.allclose(after, before)
    # A change the estimator did not make (loading other weights) is seen too.
    with torch.no_grad():
        for p in clf.head_.parameters():
            p.zero_()
    changed = clf.predict_proba(X)
    assert builds["engines"] == 3 and not np.allclose(changed, after)
    clf.fit(X, y)
    clf.predict_proba(X)
    assert builds["engines"] == 4


def test_transform_and_predict_proba_share_the_backbone_copy(builds):
    X = np.random.RandomState(0).rand(20, 5).astype(np.float32)
    clf = FineTunedClassifier(nn.Sequential(nn.Linear(5, 8), nn.ReLU()), max_epochs=1,
                              device="cpu").fit(X, np.arange(20) % 2)
    copies = builds["copies"]
    for _ in range(2):
        clf.transform(X)
        clf.predict_proba(X)
    # One copy of the backbone, one of the head (and one tree per engine).
    assert builds["engines"] == 2 and builds["copies"] - copies == 4


def test_a_parameter_change_after_fit_rebuilds(builds, images):
    pft = PretrainedFeatureTransformer(tiny_cnn(), layers=["1", "4"], device="cpu").fit(images)
    avg = pft.transform(images)
    maxed = pft.set_params(pooling="max").transform(images)
    assert builds["engines"] == 2 and not np.allclose(avg, maxed)
    np.testing.assert_array_equal(pft.set_params(pooling="avg").transform(images), avg)


def test_release_engine_and_dropping_the_estimator_free_it(images):
    pft = PretrainedFeatureTransformer(tiny_cnn(), device="cpu").fit(images)
    pft.transform(images)
    assert pft in resident._HELD
    assert pft.release_engine() is pft and pft not in resident._HELD
    pft.transform(images)
    ref = len(resident._HELD)
    del pft
    gc.collect()
    assert len(resident._HELD) == ref - 1


# -- runtimes give the torch results ---------------------------------------------------------

@pytest.fixture(scope="module")
def text_pft(tiny_bert_path):
    return PretrainedFeatureTransformer(f"hf:{tiny_bert_path}", batch_size=8,
                                        device="cpu").fit(sentences(4))


@pytest.mark.parametrize("runtime", ["compile", "onnx"])
def test_runtimes_match_torch_on_text(text_pft, runtime):
    texts = sentences(20, seed=1)
    expected = text_pft.transform(texts)
    got = clone(text_pft).set_params(runtime=runtime).fit(texts[:2]).transform(texts)
    assert cosine(got, expected).min() >= 0.9999
    # One sentence alone: another batch size and sequence length.
    one = clone(text_pft).set_params(runtime=runtime).fit(texts[:2])
    one.transform(texts)
    assert cosine(one.transform(texts[3:4]), expected[3:4]).min() >= 0.9999


def test_int8_stays_close_to_float(text_pft):
    texts = sentences(30, seed=2)
    expected = text_pft.transform(texts)
    int8 = clone(text_pft).set_params(runtime="onnx", quantize="int8").fit(texts[:2])
    assert cosine(int8.transform(texts), expected).min() >= 0.99


@pytest.mark.parametrize("runtime", ["compile", "onnx"])
def test_runtimes_match_torch_on_images_with_layers(images, runtime):
    params = dict(backbone=tiny_cnn(), layers=["2", "4"], device="cpu", batch_size=8)
    expected = PretrainedFeatureTransformer(**params).fit(images).transform(images)
    got = PretrainedFeatureTransformer(runtime=runtime, **params).fit(images).transform(images)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("runtime", ["compile", "onnx"])
def test_fine_tuners_predict_through_each_runtime(runtime):
    X = np.random.RandomState(0).rand(40, 6).astype(np.float32)
    y = (X[:, 0] > 0.5).astype(int)
    clf = FineTunedClassifier(nn.Sequential(nn.Linear(6, 8), nn.ReLU()), max_epochs=2,
                              random_state=0, device="cpu").fit(X, y)
    reg = FineTunedRegressor(nn.Sequential(nn.Linear(6, 8), nn.ReLU()), max_epochs=2,
                             random_state=0, device="cpu").fit(X, X[:, 0])
    expected = clf.predict_proba(X), clf.transform(X), reg.predict(X)
    clf.set_params(runtime=runtime)
    reg.set_params(runtime=runtime)
    np.testing.assert_allclose(clf.predict_proba(X), expected[0], atol=1e-5)
    np.testing.assert_allclose(clf.transform(X), expected[1], atol=1e-5)
    np.testing.assert_allclose(reg.predict(X), expected[2], atol=1e-5)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[expected[0].argmax(1)])


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_threads_share_every_runtime(images, runtime):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pft = PretrainedFeatureTransformer(tiny_cnn(), layers=["1", "4"], batch_size=4,
                                           device="cpu", runtime=runtime).fit(images)
        pft.transform(images[:8])  # build (compile, export) before the race
        assert_threads_match_single_thread(pft.transform, images)
    finally:
        torch.set_num_threads(before)


# -- hyperparameters -------------------------------------------------------------------------

def test_runtime_is_searchable_and_clonable(images):
    y = np.arange(len(images)) % 2
    pipe = make_pipeline(PretrainedFeatureTransformer(tiny_cnn(), device="cpu"),
                         LogisticRegression())
    search = GridSearchCV(pipe, {"pretrainedfeaturetransformer__runtime": RUNTIMES[::2],
                                 "pretrainedfeaturetransformer__quantize": [None]}, cv=2)
    search.fit(images, y)
    assert len(search.cv_results_["params"]) == 2
    est = clone(PretrainedFeatureTransformer(runtime="onnx", quantize="int8"))
    assert est.get_params()["runtime"] == "onnx" and est.get_params()["quantize"] == "int8"


def test_pickles_and_model_files_keep_the_runtime_and_load_in_a_fresh_process(
        tmp_path, text_pft):
    texts = sentences(10, seed=3)
    # (runtime="compile" is pickled in the test below: compiling again in a
    # new process would only add a minute.)
    settings = [("onnx", None), ("onnx", "int8")]
    # The fresh process starts as soon as the first setting's files are
    # written, and is told on its stdin when the next setting's are: it
    # imports and exports the first setting's graphs while this process
    # exports the next one's (an export is a long single-threaded trace).
    script = textwrap.dedent(f"""
        import json, pickle, sys, sktransfer
        texts = {[str(t) for t in texts]!r}
        out = {{}}
        for i in range({len(settings)}):
            if i:
                assert sys.stdin.readline().strip() == str(i)
            with open(f"{tmp_path}/{{i}}.pkl", "rb") as fh:
                a = pickle.load(fh)
            b = sktransfer.load(f"{tmp_path}/{{i}}.skt")
            out[i] = {{"params": [a.runtime, a.quantize, b.runtime, b.quantize],
                      "a": a.transform(texts).tolist(), "b": b.transform(texts).tolist()}}
        print(json.dumps(out))
    """)
    expected, proc = {}, None
    try:
        for i, (runtime, quantize) in enumerate(settings):
            est = clone(text_pft).set_params(runtime=runtime, quantize=quantize).fit(texts[:2])
            expected[i] = est.transform(texts)
            with open(tmp_path / f"{i}.pkl", "wb") as fh:
                pickle.dump(est, fh)
            sktransfer.save(est, tmp_path / f"{i}.skt")
            # No compiled code, session or device copy travels in the pickle.
            assert b"InferenceSession" not in (tmp_path / f"{i}.pkl").read_bytes()
            if proc is None:
                with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
                    proc = subprocess.Popen([sys.executable, "-c", script],
                                            stdin=subprocess.PIPE, stdout=out, stderr=err,
                                            text=True,
                                            env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
            else:
                proc.stdin.write(f"{i}\n")
                proc.stdin.flush()
        proc.stdin.close()
        assert proc.wait(timeout=300) == 0, (tmp_path / "err").read_text()[-3000:]
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
    out = json.loads((tmp_path / "out").read_text().strip().splitlines()[-1])
    for i, (runtime, quantize) in enumerate(settings):
        assert out[str(i)]["params"] == [runtime, quantize, runtime, quantize]
        for key in ("a", "b"):
            np.testing.assert_allclose(np.float32(out[str(i)][key]), expected[i], atol=1e-4)


def test_a_compiled_estimator_pickles_without_its_compiled_code(images):
    pft = PretrainedFeatureTransformer(tiny_cnn(), runtime="compile", device="cpu").fit(images)
    expected = pft.transform(images)
    loaded = pickle.loads(pickle.dumps(pft))
    assert loaded not in resident._HELD and loaded.runtime == "compile"
    np.testing.assert_allclose(loaded.transform(images), expected, atol=1e-6)


def test_the_feature_cache_keeps_runtimes_apart(tmp_path, text_pft):
    texts = sentences(12, seed=4)
    cached = clone(text_pft).set_params(cache=str(tmp_path)).fit(texts[:2])
    torch_rows = cached.transform(texts)
    int8 = clone(cached).set_params(runtime="onnx", quantize="int8").fit(texts[:2])
    int8_rows = int8.transform(texts)
    # Served from its own entries: the int8 numbers, not the torch ones.
    np.testing.assert_array_equal(int8.transform(texts), int8_rows)
    assert not np.array_equal(int8_rows, torch_rows)
    np.testing.assert_array_equal(cached.transform(texts), torch_rows)


# -- combinations that cannot run ------------------------------------------------------------

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("args,match", [
    (("compile", "int8", CPU, "auto"), "needs runtime='onnx'"),
    (("onnx", "int8", CUDA, "auto"), "runs on the CPU|kernels run on the CPU"),
    (("onnx", None, torch.device("mps"), "auto"), "not on 'mps'"),
    (("onnx", None, CPU, "bf16"), "float32 graph"),
    (("tensorrt", None, CPU, "auto"), "runtime must be one of"),
    (("onnx", "int4", CPU, "auto"), "quantize must be None or one of"),
])
def test_combinations_that_cannot_run_are_refused_with_the_fix(args, match):
    with pytest.raises(ValueError, match=match):
        check_runtime(*args)


def test_fit_refuses_a_bad_combination_and_a_later_call_too(images):
    with pytest.raises(ValueError, match="needs runtime='onnx'"):
        PretrainedFeatureTransformer(tiny_cnn(), quantize="int8", device="cpu").fit(images)
    pft = PretrainedFeatureTransformer(tiny_cnn(), device="cpu").fit(images)
    pft.set_params(runtime="compile", quantize="int8")
    with pytest.raises(ValueError, match="needs runtime='onnx'"):
        pft.transform(images)
    np.testing.assert_array_equal(pft.set_params(runtime="torch", quantize=None)
                                  .transform(images[:2]), pft.transform(images[:2]))


def test_onnx_without_onnxruntime_names_the_extra(monkeypatch, images):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.raises(ImportError, match=r'sktransfer\[onnx\]'):
        PretrainedFeatureTransformer(tiny_cnn(), runtime="onnx", device="cpu").fit(images)


class DataDependent(nn.Module):
    """Python control flow on tensor values: torch.export cannot capture it."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        out = self.lin(x)
        if out.sum().item() > 0:
            return out
        return -out


def test_a_network_the_exporter_cannot_handle_is_a_clear_error():
    X = np.random.RandomState(0).rand(6, 4).astype(np.float32)
    pft = PretrainedFeatureTransformer(DataDependent(), device="cpu").fit(X)
    expected = pft.transform(X)
    with pytest.raises(RuntimeError, match="runtime='onnx'.*use runtime='torch'"):
        pft.set_params(runtime="onnx").transform(X)
    # Nothing is lost: the estimator still serves in torch.
    np.testing.assert_array_equal(pft.set_params(runtime="torch").transform(X), expected)


# -- CUDA ------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_weights_stay_on_the_gpu_between_calls_and_release_frees_them(builds, images):
    pft = PretrainedFeatureTransformer(tiny_cnn(), device="cuda").fit(images)
    pft.transform(images)
    held = resident._HELD[pft]
    copies = held.resident["modules"]
    assert all(p.device.type == "cuda" for _, _, c in copies for p in c.parameters())
    # The fitted module itself stays on the CPU.
    assert all(p.device.type == "cpu" for p in pft.backbone_.module.parameters())
    built = dict(builds)
    pft.transform(images[:1])
    assert builds == built  # no weight copy for a one-sample call
    allocated = torch.cuda.memory_allocated()
    del held, copies
    pft.release_engine()
    assert torch.cuda.memory_allocated() < allocated


@pytest.mark.gpu
def test_a_search_does_not_pile_up_copies_on_the_gpu(digits):
    images, y = digits[0][:60], digits[1][:60]
    pft = PretrainedFeatureTransformer("torchvision:resnet18", weights=None, image_size=32,
                                       device="cuda")
    weights = sum(p.numel() * p.element_size()
                  for p in torchvision_resnet18().parameters())
    gc.collect()
    baseline = torch.cuda.memory_allocated()
    search = GridSearchCV(make_pipeline(pft, LogisticRegression(max_iter=200)),
                          {"logisticregression__C": [0.1, 1, 10]}, cv=3).fit(images, y)
    gc.collect()
    # Nine fitted clones served predictions; only the refitted best model
    # keeps its copy of the weights on the GPU.
    assert torch.cuda.memory_allocated() - baseline <= 1.5 * weights
    search.best_estimator_[0].release_engine()
    assert torch.cuda.memory_allocated() - baseline <= 0.5 * weights


def torchvision_resnet18():
    import torchvision

    return torchvision.models.resnet18()

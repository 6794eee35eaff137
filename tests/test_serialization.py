"""sktransfer.save / sktransfer.load: one model file, no pickle, trusted classes only."""

import json
import os
import subprocess
import sys
import textwrap
import zipfile
import zlib

import numpy as np
import pytest
import safetensors.numpy
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import FeatureUnion, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from torch import nn

import sktransfer
from sktransfer import (FineTunedClassifier, FineTunedRegressor, PretrainedFeatureTransformer,
                        load, save)
from sktransfer.saving.format import FORMAT_VERSION
from sktransfer.persistence.trust import UntrustedTypeError, class_name


class TinyNet(nn.Module):
    """A user's own network: loading it needs trusted=[its name]."""

    def __init__(self, width=5):
        super().__init__()
        self.width = width
        self.body = nn.Sequential(nn.Linear(4, width), nn.Tanh())

    def forward(self, x):
        return self.body(x) * 2


class Doubler(TransformerMixin, BaseEstimator):
    """A user's scikit-learn transformer: skops does not trust it by default."""

    def fit(self, X, y=None):
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def transform(self, X):
        return np.asarray(X) * 2


def tabular(n=40, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.rand(n, 4).astype(np.float32)
    return X, np.where(X[:, 0] + X[:, 1] > 1, "high", "low")


def images(n=12, seed=0):
    rng = np.random.RandomState(seed)
    return (rng.rand(n, 32, 32, 3) * 255).astype(np.uint8), np.arange(n) % 2


def round_trip(obj, tmp_path, **kwargs):
    path = tmp_path / "model.skt"
    save(obj, path)
    return load(path, **kwargs)


def rewrite(path, manifest=None, tensor=None):
    """Edit a model file as an attacker can: ``manifest(dict)`` changes the
    manifest, ``tensor = (name, edit(bytes) -> bytes)`` one tensor's bytes;
    checksums are recomputed (they catch corruption, not deliberate edits)."""
    with safetensors.safe_open(str(path), "np") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    content = json.loads(metadata["sktransfer.manifest"])
    if tensor is not None:
        name, edit = tensor
        tensors[name] = np.frombuffer(edit(tensors[name].tobytes()), dtype=np.uint8)
        content["checksums"][name] = zlib.crc32(tensors[name].tobytes())
    if manifest is not None:
        manifest(content)
    metadata["sktransfer.manifest"] = json.dumps(content)
    safetensors.numpy.save_file(tensors, str(path), metadata=metadata)


def edit_manifest(path, change):
    rewrite(path, manifest=change)


# -- round trips ------------------------------------------------------------------------

def test_pipeline_with_torchvision_features_and_svc(tmp_path):
    X, y = images()
    pipe = make_pipeline(PretrainedFeatureTransformer("torchvision:resnet18", weights=None,
                                                      image_size=32, random_state=0),
                         StandardScaler(), SVC()).fit(X, y)
    loaded = round_trip(pipe, tmp_path)
    assert [type(s).__name__ for _, s in loaded.steps] == [
        "PretrainedFeatureTransformer", "StandardScaler", "SVC"]
    np.testing.assert_array_equal(loaded.decision_function(X), pipe.decision_function(X))
    assert loaded.get_params(deep=True).keys() == pipe.get_params(deep=True).keys()
    assert loaded[0].backbone_.preprocess.crop_size == 32


def test_timm_backbone(tmp_path):
    pytest.importorskip("timm")
    X, _ = images(4)
    pft = PretrainedFeatureTransformer("timm:resnet18", weights=None, image_size=32,
                                       random_state=0).fit(X)
    loaded = round_trip(pft, tmp_path)
    np.testing.assert_array_equal(loaded.transform(X), pft.transform(X))
    assert loaded.n_features_out_ == pft.n_features_out_


def test_classifier_with_string_classes_keeps_history_and_params(tmp_path):
    X, y = tabular()
    clf = FineTunedClassifier(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), head=(6,),
                              class_weight="balanced", lr=0.05, max_epochs=3,
                              random_state=0).fit(X, y)
    loaded = round_trip(clf, tmp_path)
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))
    assert loaded.classes_.dtype == clf.classes_.dtype and list(loaded.classes_) == ["high", "low"]
    assert loaded.get_params()["head"] == (6,)  # a tuple stays a tuple
    assert loaded.history_[:, "train_loss"] == clf.history_[:, "train_loss"]
    # The backbone parameter (the starting network) is kept too: a refit starts alike.
    start = loaded.get_params()["backbone"]
    np.testing.assert_array_equal(start[0].weight.detach(), clf.backbone[0].weight.detach())


def test_regressor_with_two_targets_and_l2sp(tmp_path):
    X, _ = tabular()
    y = np.c_[100 * X[:, 0] + 5, -3 * X[:, 1]]
    reg = FineTunedRegressor(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), l2sp=0.01, lr=0.05,
                             max_epochs=3, random_state=0).fit(X, y)
    loaded = round_trip(reg, tmp_path)
    pred = loaded.predict(X)
    assert pred.shape == (40, 2)
    np.testing.assert_array_equal(pred, reg.predict(X))
    np.testing.assert_array_equal(loaded._y_scale, reg._y_scale)
    # partial_fit continues from the loaded weights with the L2-SP references.
    refs = [r.detach() for r in loaded.l2sp_.references()]
    for ref, orig in zip(refs, reg.l2sp_.references()):
        np.testing.assert_array_equal(ref, orig.detach())
    loaded.partial_fit(X, y)
    assert len(loaded.history_) == 4


def test_fine_tuned_estimator_as_backbone_of_another(tmp_path):
    X, y = tabular()
    source = FineTunedClassifier(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), max_epochs=1,
                                 random_state=0).fit(X, y)
    target = FineTunedRegressor(backbone=source, max_epochs=1, random_state=0).fit(X, X[:, 2])
    loaded = round_trip(target, tmp_path)
    np.testing.assert_array_equal(loaded.predict(X), target.predict(X))
    assert isinstance(loaded.backbone, FineTunedClassifier)
    np.testing.assert_array_equal(loaded.backbone.predict(X), source.predict(X))


def test_whole_search_and_other_composites(tmp_path):
    X, y = tabular()
    pipe = make_pipeline(PretrainedFeatureTransformer(nn.Sequential(nn.Linear(4, 6), nn.Tanh())),
                         LogisticRegression())
    search = GridSearchCV(pipe, {"logisticregression__C": [0.1, 10]}, cv=2).fit(X, y)
    best = round_trip(search.best_estimator_, tmp_path)
    np.testing.assert_array_equal(best.predict_proba(X), search.predict_proba(X))
    # The whole search, unfitted template included; skops does not trust its
    # splitter and scorer by default, so they are named and must be trusted.
    save(search, tmp_path / "search.skt")
    with pytest.raises(UntrustedTypeError, match="StratifiedKFold") as info:
        load(tmp_path / "search.skt")
    loaded = load(tmp_path / "search.skt", trusted=info.value.names)
    np.testing.assert_array_equal(loaded.predict_proba(X), search.predict_proba(X))
    assert loaded.best_params_ == search.best_params_
    assert not hasattr(loaded.estimator[0], "backbone_")  # the template stays unfitted

    union = FeatureUnion([("net", PretrainedFeatureTransformer(nn.Linear(4, 3))),
                          ("scaled", StandardScaler())]).fit(X)
    np.testing.assert_array_equal(round_trip(union, tmp_path).transform(X), union.transform(X))

    columns = ColumnTransformer([("net", PretrainedFeatureTransformer(nn.Linear(2, 3)), [0, 1]),
                                 ("rest", "passthrough", [2, 3])]).fit(X)
    np.testing.assert_array_equal(round_trip(columns, tmp_path).transform(X),
                                  columns.transform(X))


def test_weights_are_written_from_cpu_tensors_whatever_the_device_param(tmp_path):
    # No CUDA here: a model trained there keeps its device parameter, but save()
    # writes CPU copies of the tensors and never looks at a device.
    X, y = tabular()
    clf = FineTunedClassifier(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), max_epochs=1,
                              random_state=0).fit(X, y)
    clf.set_params(device="cuda")
    save(clf, tmp_path / "m.skt")
    weights = safetensors.numpy.load_file(str(tmp_path / "m.skt"))
    for name, tensor in clf.backbone_.module.state_dict().items():
        np.testing.assert_array_equal(weights[f"0/backbone/{name}"], tensor.cpu().numpy())
    loaded = load(tmp_path / "m.skt").set_params(device="cpu")
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.set_params(device="cpu")
                                  .predict_proba(X))


@pytest.mark.slow  # a new interpreter imports torch, transformers and scikit-learn
def test_fresh_offline_process_without_pickle_gets_equal_predictions(tmp_path, minilm_path):
    """The real MiniLM text encoder and a fine-tuned network, loaded in a fresh
    process: offline, on a CPU-only machine, with every unpickler disabled."""
    texts = ["good service", "terrible delay", "great food", "awful noise"] * 3
    labels = [1, 0, 1, 0] * 3
    text_pipe = make_pipeline(PretrainedFeatureTransformer(f"hf:{minilm_path}"),
                              LogisticRegression()).fit(texts, labels)
    X, y = tabular()
    clf = FineTunedClassifier(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), max_epochs=2,
                              random_state=0).fit(X, y)
    save(text_pipe, tmp_path / "text.skt")
    save(clf, tmp_path / "clf.skt")
    in_process = load(tmp_path / "text.skt")
    np.testing.assert_array_equal(in_process[0].transform(texts), text_pipe[0].transform(texts))
    np.save(tmp_path / "X.npy", X)
    script = textwrap.dedent(f"""
        import json, pickle, sys
        import joblib, numpy as np, torch
        import sktransfer

        def refuse(*args, **kwargs):
            raise AssertionError("unpickling attempted")
        pickle.loads = pickle.load = torch.load = joblib.load = refuse
        torch.cuda.is_available = lambda: False   # a CPU-only machine
        text = sktransfer.load({str(tmp_path / "text.skt")!r})
        clf = sktransfer.load({str(tmp_path / "clf.skt")!r})
        X = np.load({str(tmp_path / "X.npy")!r})
        print(json.dumps({{"text": text.predict_proba({texts!r}).tolist(),
                          "clf": clf.predict_proba(X).tolist()}}))
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_array_equal(np.float32(out["text"]), text_pipe.predict_proba(texts)
                                  .astype(np.float32))
    np.testing.assert_array_equal(np.float32(out["clf"]), clf.predict_proba(X))


def test_frozen_module_backbone_is_stored_once_and_loaded_as_two_copies(tmp_path):
    X, _ = tabular()
    pft = PretrainedFeatureTransformer(nn.Linear(4, 64)).fit(X)
    loaded = round_trip(pft, tmp_path)
    stored = safetensors.numpy.load_file(str(tmp_path / "model.skt"))
    assert sorted(stored) == ["0/param.backbone/bias", "0/param.backbone/weight"]
    fitted, start = loaded.backbone_.module.weight, loaded.backbone.weight
    assert torch.equal(fitted, start) and fitted.data_ptr() != start.data_ptr()
    np.testing.assert_array_equal(loaded.transform(X), pft.transform(X))


@pytest.mark.gpu
def test_model_trained_on_cuda_loads_in_a_process_without_cuda(tmp_path):
    X, y = tabular()
    clf = FineTunedClassifier(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), max_epochs=2,
                              device="cuda", random_state=0).fit(X, y)
    save(clf.set_params(device="auto"), tmp_path / "m.skt")
    np.save(tmp_path / "X.npy", X)
    script = (f"import numpy as np, sktransfer; m = sktransfer.load({str(tmp_path / 'm.skt')!r});"
              f"np.save({str(tmp_path / 'p.npy')!r}, m.predict_proba(np.load("
              f"{str(tmp_path / 'X.npy')!r})))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES=""), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"),
                               clf.set_params(device="cpu").predict_proba(X), rtol=1e-6)


# -- trust -------------------------------------------------------------------------------

def test_user_module_is_refused_by_name_then_loaded_when_trusted(tmp_path):
    X, y = tabular()
    pipe = make_pipeline(Doubler(), PretrainedFeatureTransformer(TinyNet()), SVC()).fit(X, y)
    save(pipe, tmp_path / "m.skt")
    with pytest.raises(UntrustedTypeError) as info:
        load(tmp_path / "m.skt")
    # One error names every untrusted type, the network's and skops' together.
    names = [class_name(TinyNet), class_name(Doubler)]
    assert info.value.names == sorted(names)
    assert "trusted=" in str(info.value) and str(tmp_path / "m.skt") in str(info.value)
    with pytest.raises(UntrustedTypeError, match="Doubler"):
        load(tmp_path / "m.skt", trusted=[class_name(TinyNet)])
    loaded = load(tmp_path / "m.skt", trusted=names)
    np.testing.assert_array_equal(loaded.decision_function(X), pipe.decision_function(X))
    assert loaded[1].backbone_.module.width == 5


@pytest.fixture
def payload(tmp_path, monkeypatch):
    """An importable module whose import (or call) leaves a marker file."""
    marker = tmp_path / "marker"
    (tmp_path / "evil_payload.py").write_text(textwrap.dedent(f"""
        open({str(marker)!r}, "w").close()
        class Payload:
            def __init__(self, *a, **k):
                open({str(marker)!r}, "w").close()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield marker
    sys.modules.pop("evil_payload", None)


def test_tampered_manifest_is_refused_and_runs_nothing(tmp_path, payload):
    X, y = tabular()
    clf = FineTunedClassifier(nn.Linear(4, 3), max_epochs=1, random_state=0).fit(X, y)
    path = tmp_path / "m.skt"

    save(clf, path)
    edit_manifest(path, lambda m: m["estimators"][0].update({"class": "os.system"}))
    with pytest.raises(ValueError, match=r"os\.system.*may only name"):
        load(path)

    save(clf, path)
    edit_manifest(path, lambda m: m["estimators"][0]["networks"]["head_"].update(
        {"class": "evil_payload.Payload"}))
    with pytest.raises(UntrustedTypeError, match=r"evil_payload\.Payload"):
        load(path)
    assert not payload.exists() and "evil_payload" not in sys.modules

    # A tokenizer file that a legacy tokenizer class would unpickle.
    save(clf, path)
    edit_manifest(path, lambda m: m["estimators"][0]["backbone"].update(
        {"preprocess": {"kind": "tokenize", "files": {"vocab.pkl": "x"}}}))
    with pytest.raises(ValueError, match=r"carries the file 'vocab\.pkl'.*never carry pickles"):
        load(path)


@pytest.mark.parametrize("module, name", [("evil_payload", "Payload"), ("builtins", "eval")])
def test_tampered_skops_part_is_refused_and_runs_nothing(tmp_path, payload, module, name):
    X, y = tabular()
    pipe = make_pipeline(PretrainedFeatureTransformer(nn.Linear(4, 3)), SVC()).fit(X, y)
    path = tmp_path / "m.skt"
    save(pipe, path)

    def edit(skops_bytes):
        import io
        inner = zipfile.ZipFile(io.BytesIO(skops_bytes))
        files = {n: inner.read(n) for n in inner.namelist()}
        schema = files["schema.json"].decode()
        assert '"SVC"' in schema
        files["schema.json"] = schema.replace('"sklearn.svm._classes"', f'"{module}"').replace(
            '"SVC"', f'"{name}"').encode()
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as z:
            for n, data in files.items():
                z.writestr(n, data)
        return out.getvalue()

    rewrite(path, tensor=("sklearn.skops", edit))
    with pytest.raises(UntrustedTypeError) as info:
        load(path)
    assert info.value.names == [f"{module}.{name}"]
    assert not payload.exists() and "evil_payload" not in sys.modules


# -- broken files and refusals ------------------------------------------------------------

def test_newer_format_version_names_both_versions(tmp_path):
    X, y = tabular()
    pft = PretrainedFeatureTransformer(nn.Linear(4, 3)).fit(X)
    save(pft, tmp_path / "m.skt")
    edit_manifest(tmp_path / "m.skt", lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ValueError, match=rf"format version {FORMAT_VERSION + 1}.*reads format "
                                         rf"version {FORMAT_VERSION}.*Upgrade sktransfer"):
        load(tmp_path / "m.skt")


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "not_a_model"])
def test_truncated_or_corrupted_file_names_the_file(tmp_path, damage):
    X, y = tabular()
    pft = PretrainedFeatureTransformer(nn.Linear(4, 64)).fit(X)
    path = tmp_path / "m.skt"
    save(pft, path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip_byte":
        data_start = 8 + int.from_bytes(data[:8], "little")  # after the JSON header
        data[(data_start + len(data)) // 2] ^= 0xFF  # inside the weights
    else:
        data = json.dumps({"not": "a model"}).encode()
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{path}.*(corrupted|not a safetensors file)"):
        load(path)


def test_refuses_unfitted_unsupported_and_non_data_parameters(tmp_path):
    path = tmp_path / "m.skt"
    with pytest.raises(NotFittedError, match="not fitted"):
        save(FineTunedClassifier(nn.Linear(4, 2)), path)
    with pytest.raises(NotFittedError):
        save(make_pipeline(PretrainedFeatureTransformer(nn.Linear(4, 2)), SVC()), path)
    with pytest.raises(TypeError, match="takes a fitted sktransfer estimator.*torch.nn"):
        save(nn.Linear(4, 2), path)
    X, y = tabular()
    pft = PretrainedFeatureTransformer(nn.Linear(4, 3),
                                       random_state=np.random.RandomState(0)).fit(X)
    with pytest.raises(TypeError, match=r"parameter random_state=RandomState.*set_params"):
        save(pft, path)
    factory = PretrainedFeatureTransformer(lambda: nn.Linear(4, 3)).fit(X)
    with pytest.raises(TypeError, match="backbone=.*factory"):
        save(factory, path)
    # A failed save leaves nothing behind.
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError, match="trusted must be a list of class names"):
        load(path, trusted=True)


def test_public_api_exports_save_and_load():
    assert sktransfer.save is save and sktransfer.load is load
    assert {"save", "load"} <= set(sktransfer.__all__)

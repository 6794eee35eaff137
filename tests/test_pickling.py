"""What a fitted estimator's pickle holds: specs, plain values and numpy
arrays, never a pickled module object or torch.save bytes (so reading it runs
no hidden inner pickle and an audit sees the types that really run)."""

import json
import pickle
import pickletools
import subprocess
import sys
import textwrap

import joblib
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from torch import nn

from sktransfer import FineTunedClassifier, FineTunedRegressor, PretrainedFeatureTransformer
from sktransfer.backbones import load_backbone
from sktransfer.backbones.base import backbone_from_state, backbone_state
from sktransfer.persistence.codec import is_json_able, non_json_values
from sktransfer.persistence.modules import module_from_state, module_state
from sktransfer.persistence.trust import UntrustedTypeError, class_name


class Net(nn.Module):
    """A user's module (its class lives in this test module, not in torch.nn)."""

    def __init__(self, width=6):
        super().__init__()
        self.width = width
        self.body = nn.Sequential(nn.Linear(64, width), nn.Tanh())
        self.register_buffer("scale", torch.full((width,), 0.5))

    def forward(self, x):
        return self.body(x) * self.scale


@pytest.fixture(scope="module")
def flat(digits):
    images, labels = digits
    return (images[:60].reshape(60, -1) / 255.0).astype(np.float32), labels[:60]


TEXTS = ["a cat sat on the mat", "stock prices fell", "the dog barked", "markets rallied",
         "a kitten purred", "bonds slipped"]
TEXT_Y = np.array([0, 1, 0, 1, 0, 1])


def _outputs(est, X):
    return est.transform(X) if not hasattr(est, "predict") else est.predict(X)


def _torch_globals(data):
    """The torch callables a pickle stream would import and call when read."""
    found = set()
    strings = []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.add(f"{strings[-2]}.{strings[-1]}")
        elif op.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
    return {g for g in found if g.startswith("torch")}


# -- joblib round trips, every source ------------------------------------------------

def _cases(minilm_path, digits, flat):
    images = digits[0][:6]
    X, y = flat
    return {
        "pft-torchvision": (PretrainedFeatureTransformer("torchvision:resnet18", weights=None,
                                                         image_size=32, random_state=0), images),
        "pft-timm": (PretrainedFeatureTransformer("timm:resnet18", weights=None, image_size=32,
                                                  random_state=0), images),
        "pft-hf": (PretrainedFeatureTransformer(f"hf:{minilm_path}"), TEXTS),
        "pft-tensor": (PretrainedFeatureTransformer(Net), X),
        "clf-torchvision": (FineTunedClassifier("torchvision:resnet18", weights=None,
                                                image_size=32, max_epochs=1, batch_size=8,
                                                random_state=0, device="cpu"),
                            (images, digits[1][:6])),
        "reg-timm": (FineTunedRegressor("timm:resnet18", weights=None, image_size=32,
                                        max_epochs=1, batch_size=8, random_state=0,
                                        device="cpu"), (images, digits[1][:6] / 9.0)),
        "clf-hf": (FineTunedClassifier(f"hf:{minilm_path}", freeze=4, max_epochs=1,
                                       random_state=0, device="cpu"), (TEXTS, TEXT_Y)),
        "reg-tensor": (FineTunedRegressor(Net(), l2sp=0.1, keep_optimizer=True, max_epochs=1,
                                          random_state=0, device="cpu"), (X, y / 9.0)),
    }


@pytest.mark.parametrize("case", ["pft-torchvision", "pft-timm", "pft-hf", "pft-tensor",
                                  "clf-torchvision", "reg-timm", "clf-hf", "reg-tensor"])
def test_joblib_round_trip_gives_equal_outputs(case, tmp_path, minilm_path, digits, flat):
    est, data = _cases(minilm_path, digits, flat)[case]
    X = data[0] if isinstance(data, tuple) else data
    est.fit(*data) if isinstance(data, tuple) else est.fit(data)
    joblib.dump(est, tmp_path / "model.joblib")
    loaded = joblib.load(tmp_path / "model.joblib")
    np.testing.assert_array_equal(_outputs(loaded, X), _outputs(est, X))
    if hasattr(est, "predict"):
        np.testing.assert_array_equal(loaded.transform(X), est.transform(X))
    # Nothing in the stream rebuilds a torch tensor or storage (no inner pickle).
    with open(tmp_path / "model.pkl", "wb") as fh:
        pickle.dump(est, fh)
    assert _torch_globals((tmp_path / "model.pkl").read_bytes()) == set()


def test_a_module_given_as_backbone_is_pickled_as_state(flat):
    X, _ = flat
    pft = PretrainedFeatureTransformer(Net()).fit(X)
    data = pickle.dumps(pft)
    assert _torch_globals(data) == set()
    np.testing.assert_array_equal(pickle.loads(data).transform(X), pft.transform(X))


def test_pickle_refers_to_no_torch_callable(flat):
    """A pickled fine-tuner (optimizer state, L2-SP, module param) names no
    torch function: tensors travel as numpy arrays, modules as config."""
    X, y = flat
    reg = FineTunedRegressor(Net(), l2sp=0.1, keep_optimizer=True, max_epochs=1,
                             random_state=0, device="cpu").fit(X, y / 9.0)
    assert _torch_globals(pickle.dumps(reg)) == set()
    resumed = pickle.loads(pickle.dumps(reg))
    for model in (reg, resumed):  # the optimizer state came along: training continues alike
        model.partial_fit(X, y / 9.0)
    np.testing.assert_array_equal(resumed.predict(X), reg.predict(X))


def test_loads_in_a_fresh_process_with_every_torch_unpickler_disabled(tmp_path, digits, flat):
    X, y = flat
    images = digits[0][:4]
    models = [
        FineTunedClassifier(Net(), l2sp=0.1, keep_optimizer=True, max_epochs=1,
                            random_state=0, device="cpu").fit(X, y),
        PretrainedFeatureTransformer("torchvision:resnet18", weights=None,
                                     image_size=32).fit(images),
    ]
    joblib.dump(models, tmp_path / "models.joblib")
    np.save(tmp_path / "expected0.npy", models[0].predict_proba(X))
    np.save(tmp_path / "expected1.npy", models[1].transform(images))
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent("""
        import sys, joblib, numpy as np, torch, torch.serialization, torch.storage, torch._utils
        sys.path.insert(0, sys.argv[2])  # the test module, where Net lives
        def refuse(*args, **kwargs):
            raise AssertionError("an inner torch pickle was read")
        for owner, name in [(torch, "load"), (torch.serialization, "load"),
                            (torch.storage, "_load_from_bytes"),
                            (torch._utils, "_rebuild_tensor"),
                            (torch._utils, "_rebuild_tensor_v2"),
                            (torch._utils, "_rebuild_parameter"),
                            (torch._utils, "_rebuild_parameter_with_state")]:
            setattr(owner, name, refuse)
        d = sys.argv[1]
        clf, pft = joblib.load(d + "/models.joblib")
        assert np.array_equal(clf.predict_proba(np.load(d + "/X.npy")),
                              np.load(d + "/expected0.npy"))
        assert np.array_equal(pft.transform(np.load(d + "/images.npy")),
                              np.load(d + "/expected1.npy"))
        print("same")
    """)
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path),
                             str(__import__("pathlib").Path(__file__).parent)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "same" in result.stdout


def test_pickle_loads_without_cuda(monkeypatch, flat):
    """Weights travel as numpy arrays: nothing in a pickle names a device, so
    one dumped from a GPU loads on a CPU-only machine."""
    X, y = flat
    reg = FineTunedRegressor(Net(), max_epochs=1, random_state=0, l2sp=0.01,
                             device="cpu").fit(X, y)
    data = pickle.dumps(reg)
    assert b"cuda" not in data and _torch_globals(data) == set()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loaded = pickle.loads(data)
    assert all(p.device.type == "cpu" for p in loaded._model().parameters())
    np.testing.assert_array_equal(loaded.predict(X), reg.predict(X))
    loaded.partial_fit(X, y)  # training resumes too


# -- skops: an audit sees the types that run ----------------------------------------------

def test_skops_lists_only_real_types_and_loads(flat):
    sio = pytest.importorskip("skops.io")
    X, y = flat
    pipe = make_pipeline(PretrainedFeatureTransformer(Net), LogisticRegression(max_iter=200))
    pipe.fit(X, y)
    data = sio.dumps(pipe)
    untrusted = sio.get_untrusted_types(data=data)
    user = {class_name(Net)}
    assert untrusted, "a Backbone is not a type skops trusts by default"
    assert all(t.startswith("sktransfer.") or t in user for t in untrusted), untrusted
    assert class_name(Net) in untrusted
    loaded = sio.loads(data, trusted=untrusted)
    np.testing.assert_array_equal(loaded.predict_proba(X), pipe.predict_proba(X))


# -- a class defined in a script's __main__, through loky workers ------------------------------

def test_cross_validate_returns_estimators_of_a_main_class(tmp_path):
    script = textwrap.dedent("""
        import numpy as np
        from torch import nn
        from sklearn.model_selection import cross_validate
        from sktransfer import FineTunedClassifier

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
            def forward(self, x):
                return self.body(x)

        if __name__ == "__main__":
            rng = np.random.RandomState(0)
            X = rng.randn(40, 4).astype(np.float32)
            y = (X[:, 0] > 0).astype(int)
            out = cross_validate(FineTunedClassifier(Net(), max_epochs=1, device="cpu"),
                                 X, y, cv=2, n_jobs=2, return_estimator=True)
            for est in out["estimator"]:
                assert type(est.backbone_.module).__name__ == "Net"
                assert est.predict(X).shape == (40,)
            print("ok")
    """)
    path = tmp_path / "script.py"
    path.write_text(script)
    result = subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                            timeout=180, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok" in result.stdout


# -- trust ------------------------------------------------------------------------------------

def test_untrusted_class_loads_from_pickle_but_not_from_state():
    bb = load_backbone(Net())
    restored = pickle.loads(pickle.dumps(bb))  # the user trusted this pickle
    x = torch.rand(3, 64)
    torch.testing.assert_close(restored.module(x), bb.module(x), rtol=0, atol=0)

    config, tensors = backbone_state(bb)
    with pytest.raises(UntrustedTypeError, match="trusted=") as info:
        backbone_from_state(config, tensors)
    assert isinstance(info.value, TypeError)
    assert class_name(Net) in str(info.value) and info.value.names == [class_name(Net)]
    rebuilt = backbone_from_state(config, tensors, trusted=[class_name(Net)])
    torch.testing.assert_close(rebuilt.module(x), bb.module(x), rtol=0, atol=0)


def test_module_state_keeps_dtype_grad_ties_and_survives_json():
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Linear(3, 3))
    net[2].weight = net[0].weight  # tied
    net[0].bias.requires_grad_(False)
    net[1].to(torch.float64)
    net.eval()
    config, tensors = module_state(net)
    assert is_json_able(config)
    copy = module_from_state(json.loads(json.dumps(config)), tensors)
    assert copy[2].weight is copy[0].weight
    assert not copy[0].bias.requires_grad and copy[1].weight.dtype == torch.float64
    assert not copy.training and tuple(copy[1].running_mean.shape) == (3,)
    x = torch.rand(2, 3)
    torch.testing.assert_close(copy[0](x), net[0](x), rtol=0, atol=0)


def test_non_json_attributes_are_named():
    net = nn.Sequential(nn.Linear(2, 2))
    net[0].hook = print
    config, _ = module_state(net)
    bad = non_json_values(config)
    assert len(bad) == 1 and "'hook'" in bad[0] and "builtin_function_or_method" in bad[0]


# -- the documented pickle-free route: state dict file -> weights=path -------------------------

@pytest.mark.parametrize("source", ["hf", "torchvision", "module"])
def test_state_dict_file_route(source, tmp_path, minilm_path, digits, flat):
    if source == "hf":
        spec, X, y, kw = f"hf:{minilm_path}", TEXTS, TEXT_Y, {"freeze": 4}
    elif source == "torchvision":
        spec, X, y = "torchvision:resnet18", digits[0][:6], digits[1][:6]
        kw = {"weights": None, "image_size": 32, "batch_size": 8}
    else:
        spec, (X, y), kw = Net(), flat, {}
    clf = FineTunedClassifier(spec, max_epochs=1, random_state=0, device="cpu", **kw).fit(X, y)
    path = tmp_path / "backbone.pt"
    torch.save(clf.backbone_.module.state_dict(), path)
    pft = PretrainedFeatureTransformer(spec, weights=str(path),
                                       image_size=kw.get("image_size")).fit(X)
    np.testing.assert_allclose(pft.transform(X), clf.transform(X), rtol=0, atol=1e-6)

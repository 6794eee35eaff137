"""An engine serves the model as it is now: any change to it rebuilds, nothing else does.

What users rely on: after a change to a fitted estimator's network (a
submodule replaced, a parameter reassigned, ``load_state_dict(...,
assign=True)``, a plain attribute or a buffer set), ``transform`` gives what
a fresh estimator of the changed network gives, never the old model's
numbers; an unchanged model builds its engine once, however many calls;
an ONNX engine is never seen half built by another thread; and compiled
code is written only where no other user of the host can write.
"""

import copy
import os
import stat
import sys
import threading
import types

import numpy as np
import pytest
import torch
from torch import nn

from sktransfer import FineTunedClassifier, PretrainedFeatureTransformer
from sktransfer.engine import resident
from sktransfer.engine import runtimes
from sktransfer.engine import snapshot as engine_snapshot
from sktransfer.engine.module import InferenceModule
from sktransfer.engine.onnx import ExportedEngine, OnnxEngine


class Scaled(nn.Module):
    """A network whose output depends on a plain attribute and a non-persistent buffer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)
        self.scale = 1.0
        self.offsets = [0.0, 0.0, 0.0]
        self.config = types.SimpleNamespace(power=1)
        self.options = {"negate": False}
        self.extra = nn.ModuleList()
        self.register_buffer("shift", torch.zeros(3), persistent=False)

    def forward(self, x):
        out = (self.fc(x) * self.scale + self.shift + torch.tensor(self.offsets))
        out = out ** self.config.power
        for layer in self.extra:
            out = layer(out)
        return -out if self.options["negate"] else out


X = np.random.RandomState(0).rand(10, 4).astype(np.float32)


def _new_linear():
    torch.manual_seed(1)
    return nn.Linear(4, 3)


def _assign_state(m):
    state = {k: torch.randn_like(v) for k, v in m.state_dict().items()}
    m.load_state_dict(state, assign=True)


def _set_data(m):
    m.fc.weight.data = torch.randn(3, 4)


def _in_place(m):
    with torch.no_grad():
        m.fc.bias.add_(1.0)


CHANGES = {
    "submodule replaced": lambda m: setattr(m, "fc", _new_linear()),
    "parameter reassigned": lambda m: setattr(m.fc, "weight", nn.Parameter(torch.randn(3, 4))),
    "load_state_dict assign": _assign_state,
    "plain attribute": lambda m: setattr(m, "scale", 100.0),
    "list attribute changed in place": lambda m: m.offsets.__setitem__(1, 5.0),
    "config object's field set": lambda m: setattr(m.config, "power", 2),
    "dict attribute changed in place": lambda m: m.options.__setitem__("negate", True),
    "layer appended to an empty list": lambda m: m.extra.append(nn.Linear(3, 3)),
    "non-persistent buffer": lambda m: setattr(m, "shift", torch.ones(3)),
    "tensor data swapped": _set_data,
    "weights changed in place": _in_place,
}


@pytest.fixture
def builds(monkeypatch):
    """Count the engines built."""
    counts = {"engines": 0}
    build = resident.build_engine

    def counted(*args, **kwargs):
        counts["engines"] += 1
        return build(*args, **kwargs)

    monkeypatch.setattr(resident, "build_engine", counted)
    return counts


def fresh_output(module):
    """What a new estimator of ``module`` (as it is now) gives."""
    return PretrainedFeatureTransformer(copy.deepcopy(module), device="cpu").fit(X).transform(X)


@pytest.fixture(params=["version tags", "entries by identity"])
def watch(request, monkeypatch):
    """Both ways a snapshot sees writes: CPython's dict version tags, or comparing entries."""
    if request.param == "entries by identity":
        monkeypatch.setattr(engine_snapshot, "_VERSIONS_CHECKED", False)
    return request.param


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_a_changed_network_gives_the_changed_networks_numbers(change, watch):
    pft = PretrainedFeatureTransformer(Scaled(), device="cpu").fit(X)
    before = pft.transform(X)
    change(pft.backbone_.module)
    after = pft.transform(X)
    assert not np.allclose(after, before)
    np.testing.assert_allclose(after, fresh_output(pft.backbone_.module), rtol=1e-6, atol=1e-6)


def test_a_changed_head_gives_the_changed_classifiers_predictions():
    y = np.arange(len(X)) % 2
    clf = FineTunedClassifier(nn.Sequential(nn.Linear(4, 6), nn.ReLU()), max_epochs=1,
                              random_state=0, device="cpu").fit(X, y)
    before = clf.predict_proba(X)
    torch.manual_seed(3)
    clf.head_[1] = nn.Linear(6, 2)  # a new output layer: no tensor changed in place
    after = clf.predict_proba(X)
    assert not np.allclose(after, before)
    with torch.no_grad():
        logits = clf.head_.eval()(clf.backbone_.module.eval()(torch.from_numpy(X)))
    np.testing.assert_allclose(after, logits.softmax(1).numpy(), rtol=1e-5, atol=1e-6)


def test_an_unchanged_model_builds_its_engine_once_over_100_calls(builds, monkeypatch):
    snapshots = []
    take = resident.ModelSnapshot

    def counted(module):
        snapshots.append(module)
        return take(module)

    monkeypatch.setattr(resident, "ModelSnapshot", counted)
    pft = PretrainedFeatureTransformer(Scaled(), device="cpu").fit(X)
    first = pft.transform(X)
    for _ in range(100):
        np.testing.assert_array_equal(pft.transform(X[:3]), first[:3])
    assert builds["engines"] == 1 and len(snapshots) == 1


def test_writes_that_change_nothing_rebuild_nothing(builds, watch):
    pft = PretrainedFeatureTransformer(Scaled(), device="cpu").fit(X)
    first = pft.transform(X)
    module = pft.backbone_.module
    for write in (module.train, module.eval, lambda: setattr(module, "scale", 1.0),
                  lambda: setattr(module.config, "power", 1)):
        write()
        np.testing.assert_array_equal(pft.transform(X), first)
    assert builds["engines"] == 1


# -- ONNX: the engine is published whole -------------------------------------------------


def test_a_thread_never_sees_a_half_published_onnx_engine():
    """Pause the exporting thread right after its export returns, and call from another.

    The other thread must either wait for the engine or see it whole: never
    a session without its input names.
    """
    pytest.importorskip("onnxruntime")
    engine = OnnxEngine(InferenceModule(nn.Linear(4, 3).eval()), torch.device("cpu"))
    batch = torch.from_numpy(X)
    exported, paused, other_done = threading.Event(), threading.Event(), threading.Event()
    results = {}

    def tracer(frame, event, _arg):
        code = frame.f_code
        if event == "return" and code is ExportedEngine._exported.__code__:
            exported.set()
        if (event == "line" and exported.is_set() and not paused.is_set()
                and code is ExportedEngine.__call__.__code__):
            paused.set()
            other_done.wait(timeout=1.0)  # the other thread waits for the lock, or is done
        return tracer

    def exporter():
        sys.settrace(tracer)
        try:
            results["exporter"] = engine(batch)
        finally:
            sys.settrace(None)

    def other():
        paused.wait(timeout=60)
        try:
            results["other"] = engine(batch)
        except Exception as exc:  # noqa: BLE001 - the failure is what the test reports
            results["other"] = exc
        other_done.set()

    threads = [threading.Thread(target=exporter), threading.Thread(target=other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert paused.is_set()
    assert isinstance(results["other"], torch.Tensor), results["other"]
    np.testing.assert_allclose(results["other"].numpy(), results["exporter"].numpy())


# -- compiled code goes to a directory only this user can write ---------------------------


@pytest.fixture
def fresh_tmp(tmp_path, monkeypatch):
    """A temporary directory as the system's one, and no inductor cache chosen yet."""
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    return tmp_path


def _default_inductor_dir():
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    return default_cache_dir()


def _is_private(path):
    info = os.lstat(path)
    return (stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
            and stat.S_IMODE(info.st_mode) == 0o700)


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0,
                    reason="making a directory another user's takes root")
def test_a_compiled_engine_never_uses_a_directory_another_user_made(fresh_tmp):
    planted = _default_inductor_dir()
    os.mkdir(planted)
    os.chmod(planted, 0o777)
    os.chown(planted, 65534, 65534)  # what another user of the host could have made first
    with pytest.warns(UserWarning, match="another user"):
        runtimes.CompiledEngine(InferenceModule(nn.Linear(4, 3).eval()), torch.device("cpu"))
    from torch._inductor.runtime.cache_dir_utils import cache_dir
    used = cache_dir()
    assert os.path.realpath(used) != os.path.realpath(planted)
    assert _is_private(used)
    assert stat.S_IMODE(os.lstat(planted).st_mode) == 0o777  # someone else's: untouched


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX ownership and modes")
def test_an_own_default_directory_left_open_is_closed_to_others(fresh_tmp):
    default = _default_inductor_dir()
    os.mkdir(default)
    os.chmod(default, 0o777)
    runtimes.CompiledEngine(InferenceModule(nn.Linear(4, 3).eval()), torch.device("cpu"))
    from torch._inductor.runtime.cache_dir_utils import cache_dir
    assert os.path.realpath(cache_dir()) == os.path.realpath(default) and _is_private(default)


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX ownership and modes")
def test_a_planted_symlink_is_not_followed(fresh_tmp):
    target = fresh_tmp / "elsewhere"
    target.mkdir(mode=0o700)
    os.symlink(target, _default_inductor_dir())
    with pytest.warns(UserWarning, match="symbolic link"):
        runtimes.CompiledEngine(InferenceModule(nn.Linear(4, 3).eval()), torch.device("cpu"))
    from torch._inductor.runtime.cache_dir_utils import cache_dir
    used = cache_dir()
    assert not os.path.islink(used) and _is_private(used)
    assert os.path.realpath(used) != os.path.realpath(target)


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX ownership and modes")
def test_the_default_directory_is_created_private_and_then_kept(fresh_tmp):
    runtimes.CompiledEngine(InferenceModule(nn.Linear(4, 3).eval()), torch.device("cpu"))
    default = _default_inductor_dir()
    assert _is_private(default)
    # torch keeps its own default: nothing was redirected.
    from torch._inductor.runtime.cache_dir_utils import cache_dir
    assert os.path.realpath(cache_dir()) == os.path.realpath(default)


def test_a_directory_the_user_chose_is_respected(fresh_tmp, monkeypatch):
    chosen = fresh_tmp / "mine"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(chosen))
    runtimes.CompiledEngine(InferenceModule(nn.Linear(4, 3).eval()), torch.device("cpu"))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(chosen)

"""runtime="openvino": the network compiled by OpenVINO for the CPU (issue 33)."""

import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from torch import nn

import sktransfer
from sktransfer import FineTunedClassifier, PretrainedFeatureTransformer
from sktransfer.engine.runtimes import check_runtime

pytest.importorskip("openvino")  # in the dev extra; skipped only where not installed

from sktransfer.engine.openvino import cpu_has_bf16  # noqa: E402

CPU = torch.device("cpu")
TEXTS = ["the cat sat on the mat", "a dog ran far", "the big red dog ran on a mat",
         "small cat", "a blue dog", "the mat"] * 2


def tiny_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8).eval(), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten())


def cosine(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def images():
    return np.random.RandomState(0).rand(12, 3, 16, 16).astype(np.float32)


def test_text_matches_torch_at_every_batch_size_and_length(tiny_bert_path):
    torch_pft = PretrainedFeatureTransformer(f"hf:{tiny_bert_path}", batch_size=8).fit(TEXTS)
    ov = clone(torch_pft).set_params(runtime="openvino").fit(TEXTS[:2])
    expected = torch_pft.transform(TEXTS)
    assert cosine(ov.transform(TEXTS), expected).min() >= 0.9999
    # One sentence alone: another batch size and sequence length, the same graph.
    assert cosine(ov.transform(TEXTS[2:3]), expected[2:3]).min() >= 0.9999


def test_images_with_layers_and_a_fine_tuner_match_torch(images):
    params = dict(backbone=tiny_cnn(), layers=["2", "4"], batch_size=8)
    expected = PretrainedFeatureTransformer(**params).fit(images).transform(images)
    got = PretrainedFeatureTransformer(runtime="openvino", **params).fit(images)
    np.testing.assert_allclose(got.transform(images), expected, rtol=1e-4, atol=1e-5)

    X = np.random.RandomState(0).rand(40, 6).astype(np.float32)
    y = (X[:, 0] > 0.5).astype(int)
    clf = FineTunedClassifier(nn.Sequential(nn.Linear(6, 8), nn.ReLU()), max_epochs=2,
                              random_state=0).fit(X, y)
    expected = clf.predict_proba(X)
    clf.set_params(runtime="openvino")
    np.testing.assert_allclose(clf.predict_proba(X), expected, atol=1e-5)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[expected.argmax(1)])
    # Pickled and saved, it keeps the runtime and the numbers.
    for copy in (pickle.loads(pickle.dumps(clf)), _saved(clf)):
        assert copy.runtime == "openvino"
        np.testing.assert_allclose(copy.predict_proba(X), expected, atol=1e-5)


def _saved(est):
    import os
    import tempfile

    path = os.path.join(tempfile.mkdtemp(), "model.skt")
    sktransfer.save(est, path)
    return sktransfer.load(path)


def test_the_feature_cache_keys_name_the_runtime(tmp_path, images):
    params = dict(backbone=tiny_cnn(), cache=str(tmp_path))
    torch_rows = PretrainedFeatureTransformer(**params).fit(images).transform(images)
    ov = PretrainedFeatureTransformer(runtime="openvino", **params).fit(images)
    ov_rows = ov.transform(images)
    # Its own entries: OpenVINO's numbers, served back as they were stored.
    np.testing.assert_array_equal(ov.transform(images), ov_rows)
    assert not np.array_equal(ov_rows, torch_rows)
    np.testing.assert_allclose(ov_rows, torch_rows, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("args,match", [
    (("openvino", None, torch.device("cuda"), "auto"), "compiles the network for the CPU"),
    (("openvino", None, CPU, "fp16"), "precision='fp16' applies to GPUs"),
])
def test_combinations_that_cannot_run_are_refused_with_the_fix(args, match):
    with pytest.raises(ValueError, match=match):
        check_runtime(*args)


def test_bf16_runs_where_the_cpu_has_bf16_units_and_fp32_always_means_fp32(monkeypatch):
    from sktransfer.engine import openvino as engine

    monkeypatch.setattr(engine, "_WARNED", set())
    X = np.random.RandomState(0).rand(16, 8).astype(np.float32)
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 8))
    expected = PretrainedFeatureTransformer(net).fit(X).transform(X)
    fp32 = PretrainedFeatureTransformer(net, runtime="openvino", precision="fp32").fit(X)
    np.testing.assert_allclose(fp32.transform(X), expected, rtol=1e-5, atol=1e-6)
    assert check_runtime("openvino", None, CPU, "fp32") is None
    assert check_runtime("openvino", None, CPU, "auto") is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        used = check_runtime("openvino", None, CPU, "bf16")
    if cpu_has_bf16():
        assert used is torch.bfloat16
        bf16 = PretrainedFeatureTransformer(net, runtime="openvino", precision="bf16").fit(X)
        assert cosine(bf16.transform(X), expected).min() >= 0.999
    else:
        # No bf16 units: float32, and the user is told so.
        assert used is None
        assert any("no bf16 units" in str(w.message) for w in caught)
        bf16 = PretrainedFeatureTransformer(net, runtime="openvino", precision="bf16").fit(X)
        np.testing.assert_allclose(bf16.transform(X), expected, rtol=1e-5, atol=1e-6)


def test_auto_keeps_bf16_only_after_a_probe_at_fit_shows_agreement(monkeypatch):
    from sktransfer.engine import openvino as engine
    from sktransfer.engine import resident

    X = np.random.RandomState(0).rand(30, 6).astype(np.float32)
    y = (X[:, 0] > 0.5).astype(int)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
    # Without bf16 units nothing is probed: float32, recorded.
    monkeypatch.setattr(engine, "cpu_has_bf16", lambda: False)
    clf = FineTunedClassifier(net, runtime="openvino", max_epochs=1, random_state=0).fit(X, y)
    assert clf.precision_ == "fp32" and not hasattr(clf, "precision_agreement_")
    expected = clf.predict_proba(X)
    # A CPU reporting bf16 units: the probe runs both and keeps bf16 where they agree
    # (OpenVINO runs this CPU's "bf16" in float32: they agree exactly).
    monkeypatch.setattr(engine, "cpu_has_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(X, y)
        assert clf.precision_ == "bf16" and clf.precision_agreement_ <= 1e-3
        assert check_runtime("openvino", None, CPU, clf._engine_precision()) is torch.bfloat16
        np.testing.assert_allclose(clf.predict_proba(X), expected, atol=1e-5)
        pft = PretrainedFeatureTransformer(net, runtime="openvino").fit(X)
        assert pft.precision_ == "bf16" and pft.precision_agreement_ >= 0.9999
        # Where they disagree beyond the bar, float32 stays.
        monkeypatch.setattr(resident, "FEATURE_COSINE", 1.5)
        pft.fit(X)
        assert pft.precision_ == "fp32" and pft.precision_agreement_ < 1.5
        # precision="fp32" always means float32: no probe, nothing recorded.
        fp32 = PretrainedFeatureTransformer(net, runtime="openvino", precision="fp32").fit(X)
        assert not hasattr(fp32, "precision_")
        assert check_runtime("openvino", None, CPU, fp32._engine_precision()) is None

"""quantize="int8" with runtime="openvino": NNCF's static quantization, calibrated at fit (issue 33)."""

import pickle
import sys

import numpy as np
import pytest
import torch
from sklearn.base import clone
from torch import nn

import sktransfer
from sktransfer import FineTunedClassifier, PretrainedFeatureTransformer

pytest.importorskip("openvino")  # in the dev extra; skipped only where not installed
pytest.importorskip("nncf")

from sktransfer.engine import calibration, onnx as onnx_engine  # noqa: E402
from sktransfer.engine.calibration import has_attention  # noqa: E402
from conftest import count_calls  # noqa: E402


def tiny_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def cosine(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def images():
    return np.random.RandomState(0).rand(40, 3, 16, 16).astype(np.float32)


@pytest.fixture
def counted(monkeypatch):
    """How many times NNCF quantized a network and torch exported one."""
    return count_calls(monkeypatch, quantized=("sktransfer.engine.openvino", "quantized_graph"),
                       exported=(onnx_engine, "export_program"))


@pytest.fixture(scope="module")
def fitted(images):
    """A float32 transformer and an int8 one over the same network."""
    net = tiny_cnn()
    return (PretrainedFeatureTransformer(net).fit(images),
            PretrainedFeatureTransformer(net, runtime="openvino", quantize="int8").fit(images))


def test_int8_is_calibrated_once_at_fit_and_close_to_float32(images, counted):
    net = tiny_cnn()
    expected = PretrainedFeatureTransformer(net).fit(images).transform(images)
    int8 = PretrainedFeatureTransformer(net, runtime="openvino", quantize="int8").fit(images)
    assert counted == {"quantized": 1, "exported": 1}
    got = int8.transform(images)
    for rows in (images[:1], images[5:12]):
        int8.transform(rows)
    assert counted == {"quantized": 1, "exported": 1}  # every call reuses the fit's network
    assert cosine(got, expected).min() >= 0.99
    assert not np.allclose(got, expected, rtol=1e-4, atol=1e-5)  # int8: not float32's numbers
    # The agreement recorded is the one measured on the fit samples.
    assert int8.int8_agreement_ == pytest.approx(float(cosine(got, expected).min()), abs=1e-6)
    record = int8.int8_networks_["transform"]
    assert b"FakeQuantize" in record["graph"]


def test_pickles_and_model_files_serve_the_same_numbers_without_calibrating(fitted, images,
                                                                           tmp_path, counted):
    _, int8 = fitted
    expected = int8.transform(images)
    path = str(tmp_path / "model.skt")
    sktransfer.save(int8, path)
    for copy in (pickle.loads(pickle.dumps(int8)), sktransfer.load(path)):
        assert (copy.runtime, copy.quantize) == ("openvino", "int8")
        np.testing.assert_array_equal(copy.transform(images), expected)
    # Read from the stored network: nothing exported, nothing quantized.
    assert counted == {"quantized": 0, "exported": 0}


def test_a_network_changed_since_the_calibration_is_refused(images):
    int8 = PretrainedFeatureTransformer(tiny_cnn(), runtime="openvino", quantize="int8")
    int8.fit(images)
    with torch.no_grad():
        int8.backbone_.module[0].bias.add_(1.0)
    with pytest.raises(ValueError, match="changed since.*call fit again"):
        int8.transform(images)
    # Fitting again (from the backbone parameter) calibrates anew.
    float32 = PretrainedFeatureTransformer(tiny_cnn()).fit(images)
    assert cosine(int8.fit(images).transform(images), float32.transform(images)).min() >= 0.99


def test_a_stored_network_for_other_settings_is_refused(fitted, images):
    _, int8 = fitted
    copy = pickle.loads(pickle.dumps(int8))
    copy.int8_networks_["transform"]["settings"] = repr((["2"], ["avg"]))
    with pytest.raises(ValueError, match="for the settings"):
        copy.transform(images)


def test_switching_to_int8_after_fit_asks_for_a_fit(images):
    X = np.random.RandomState(0).rand(40, 6).astype(np.float32)
    clf = FineTunedClassifier(nn.Sequential(nn.Linear(6, 8), nn.ReLU()), max_epochs=1,
                              random_state=0).fit(X, (X[:, 0] > 0.5).astype(int))
    clf.set_params(runtime="openvino", quantize="int8")
    with pytest.raises(ValueError, match="holds none for this call.*call fit again"):
        clf.predict(X)


def test_a_classifier_calibrates_predictions_and_transform_and_again_in_partial_fit(counted):
    rng = np.random.RandomState(0)
    X = rng.rand(80, 6).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 1).astype(int)
    params = dict(backbone=nn.Sequential(nn.Linear(6, 16), nn.ReLU()), max_epochs=20, lr=0.05,
                  random_state=0)
    float32 = FineTunedClassifier(**params).fit(X, y)
    int8 = FineTunedClassifier(runtime="openvino", quantize="int8", **params).fit(X, y)
    assert sorted(int8.int8_networks_) == ["proba", "transform"]
    assert counted["quantized"] == 2
    expected = float32.predict_proba(X)
    got = int8.predict_proba(X)
    assert np.abs(got - expected).max() == pytest.approx(int8.int8_agreement_, abs=1e-6)
    assert np.abs(got - expected).max() < 0.1
    assert (int8.predict(X) == float32.predict(X)).mean() >= 0.9
    assert cosine(int8.transform(X), float32.transform(X)).min() >= 0.99
    # partial_fit changes the weights: it calibrates again, and predictions work.
    int8.partial_fit(X[:40], y[:40])
    assert counted["quantized"] == 4
    assert int8.predict(X).shape == (80,)


def test_the_feature_cache_keeps_each_calibration_apart(images, tmp_path):
    net = tiny_cnn()
    params = dict(backbone=net, runtime="openvino", quantize="int8", cache=str(tmp_path))
    first = PretrainedFeatureTransformer(**params).fit(images[:20])
    first_rows = first.transform(images)
    # The same weights, calibrated on other samples: its own numbers, never first's.
    second = PretrainedFeatureTransformer(**params).fit(images[20:])
    second_rows = second.transform(images)
    uncached = clone(second).set_params(cache=None).fit(images[20:]).transform(images)
    np.testing.assert_array_equal(second_rows, uncached)
    assert not np.array_equal(first_rows, second_rows)
    # A stored network altered by hand gets entries of its own too.
    planted = pickle.loads(pickle.dumps(second))
    planted.int8_networks_ = pickle.loads(pickle.dumps(first.int8_networks_))
    np.testing.assert_array_equal(planted.transform(images), first_rows)
    float_rows = PretrainedFeatureTransformer(net, runtime="openvino",
                                              cache=str(tmp_path)).fit(images).transform(images)
    assert not np.array_equal(float_rows, first_rows)


def test_text_transformers_get_nncf_s_transformer_scheme(tiny_bert_path):
    texts = ["the cat sat on the mat", "a dog ran far", "the big red dog ran on a mat",
             "small cat", "a blue dog", "the mat"] * 4
    float32 = PretrainedFeatureTransformer(f"hf:{tiny_bert_path}").fit(texts)
    int8 = clone(float32).set_params(runtime="openvino", quantize="int8").fit(texts)
    assert cosine(int8.transform(texts), float32.transform(texts)).min() >= 0.98
    import openvino

    graph = calibration.read_record(openvino.Core(), int8.int8_networks_["transform"])
    assert has_attention(graph)
    cnn = PretrainedFeatureTransformer(tiny_cnn(), runtime="openvino", quantize="int8")
    cnn.fit(np.random.RandomState(0).rand(4, 3, 16, 16).astype(np.float32))
    assert not has_attention(calibration.read_record(openvino.Core(),
                                                     cnn.int8_networks_["transform"]))


def test_without_nncf_the_error_names_the_extra(monkeypatch, images):
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(ImportError, match=r"sktransfer\[openvino\]"):
        PretrainedFeatureTransformer(tiny_cnn(), runtime="openvino", quantize="int8").fit(images)


def _onnx_reading(path, size):
    """ONNX bytes whose one weight is the file at ``path`` (ONNX's external data)."""
    from onnx import TensorProto, helper

    weight = TensorProto(name="w", data_type=TensorProto.UINT8, dims=[size],
                         data_location=TensorProto.EXTERNAL)
    entry = weight.external_data.add()
    entry.key, entry.value = "location", str(path)
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["output"])], "g", [],
                              [helper.make_tensor_value_info("output", TensorProto.UINT8,
                                                             [size])], initializer=[weight])
    return helper.make_model(graph).SerializeToString()


def test_a_stored_graph_of_another_format_is_never_read(fitted, images, tmp_path):
    from sktransfer.persistence.trust import UntrustedContentError

    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"API_KEY=hunter2")
    crafted = pickle.loads(pickle.dumps(fitted[1]))
    crafted.int8_networks_["transform"]["graph"] = _onnx_reading(secret, 15)
    # A pickle (the user's own) is refused at the call, a model file at load.
    with pytest.raises(ValueError, match="not an OpenVINO IR graph"):
        crafted.transform(images)
    path = str(tmp_path / "crafted.skt")
    sktransfer.save(crafted, path)
    with pytest.raises(UntrustedContentError, match="int8_networks_.*OpenVINO IR"):
        sktransfer.load(path)
    crafted.int8_networks_["transform"] = {"graph": b"<?xml"}
    sktransfer.save(crafted, path)
    with pytest.raises(UntrustedContentError, match="keys"):
        sktransfer.load(path)


def test_a_failed_calibration_leaves_no_float_engine_behind(images, monkeypatch):
    from sktransfer.engine.resident import engine_purposes

    def failing(graph, samples):
        raise RuntimeError("NNCF failed")

    monkeypatch.setattr("sktransfer.engine.openvino.quantized_graph", failing)
    int8 = PretrainedFeatureTransformer(tiny_cnn(), runtime="openvino", quantize="int8")
    with pytest.raises(RuntimeError, match="NNCF failed"):
        int8.fit(images)
    assert engine_purposes(int8) == []
    with pytest.raises(ValueError, match="holds none"):  # no float32 numbers as int8
        int8.transform(images)


def test_quieting_nncf_touches_no_stream_and_restores_after_overlapping_calls():
    import logging
    import threading

    import rich

    logger, console = logging.getLogger("nncf"), rich.get_console()
    before = (logger.level, console.quiet, sys.stdout, sys.stderr)
    entered, release = threading.Barrier(2), threading.Event()

    def calibrating(wait):
        with calibration._quiet():
            assert (sys.stdout, sys.stderr) == before[2:]
            assert console.quiet and logger.level == logging.ERROR
            entered.wait()
            if wait:
                release.wait()

    first = threading.Thread(target=calibrating, args=(True,))
    first.start()
    calibrating(False)  # ends while the first is still inside
    assert console.quiet
    release.set()
    first.join()
    assert (logger.level, console.quiet, sys.stdout, sys.stderr) == before

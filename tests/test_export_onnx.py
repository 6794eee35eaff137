"""export_onnx: a fitted model as one ONNX graph, served by onnxruntime without torch.

Every graph is compared with the fitted estimator it came from (labels equal,
probabilities within 1e-4, 1e-3 for images), and served in a process where
``import torch`` and ``import sktransfer`` fail, as in a slim container.
"""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.cluster import KMeans
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import make_pipeline, make_union
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import SVC
from torch import nn

import sktransfer
from sktransfer import (FineTunedClassifier, FineTunedRegressor, PretrainedFeatureTransformer,
                        export_onnx)
from sktransfer.backbones import load_backbone
from sktransfer.backbones.onnx_graph import UnsupportedPreprocessing
from sktransfer.backbones.onnx_preprocess import image_graph
from sktransfer.backbones.onnx_text import text_graph
from sktransfer.backbones.preprocess import ImagePreprocess
from sktransfer.export import ExportError, inference_session, register_converters

FAST = dict(lr=0.01, max_epochs=3, batch_size=16, random_state=0)

SERVE = """
import sys
sys.modules["torch"] = None        # `import torch` raises ImportError from here on
sys.modules["sktransfer"] = None
import numpy as np, onnxruntime as ort
path, inputs, out = sys.argv[1:]
X = np.load(inputs, allow_pickle=True)["X"]
options = ort.SessionOptions()
try:
    from onnxruntime_extensions import get_library_path
    options.register_custom_ops_library(get_library_path())
except ImportError:
    pass
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
names = [o.name for o in session.get_outputs()]
np.savez(out, **dict(zip(names, session.run(None, {"X": X}))))
"""


# What the serving environment holds: the versions of this one, so pip finds
# them where this environment's came from.
SERVING_PACKAGES = ("numpy", "onnxruntime", "onnxruntime-extensions")


@pytest.fixture(scope="session")
def serving_python(tmp_path_factory):
    """The Python of a separate environment built with pip that holds only numpy,
    onnxruntime and onnxruntime-extensions (and what they need): no torch, no
    scikit-learn, no sktransfer. Built once per session, shared by pytest-xdist's
    workers."""
    import importlib.metadata

    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # the same for every xdist worker
    env = shared / "serving-env"
    python = env / "bin" / "python"
    with FileLock(str(shared / "serving-env.lock")):
        if not (env / "ready").exists():
            subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=300)
            pins = [f"{name}=={importlib.metadata.version(name)}" for name in SERVING_PACKAGES]
            subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                            "--disable-pip-version-check", *pins],
                           check=True, timeout=900, capture_output=True)
            (env / "ready").touch()
    return python


def serve_without_torch(python, path, X, tmp_path):
    """The graph's outputs, computed by ``python`` (the serving environment's), in a
    process where importing torch or sktransfer fails even if they were there."""
    inputs, out = tmp_path / "inputs.npz", tmp_path / "outputs.npz"
    np.savez(inputs, X=X)
    # -I: isolated from this checkout (the current folder) and PYTHON* variables.
    subprocess.run([str(python), "-I", "-c", SERVE, str(path), str(inputs), str(out)],
                   check=True, timeout=300, capture_output=True)
    with np.load(out, allow_pickle=True) as outputs:
        return dict(outputs)


def test_the_serving_environment_holds_no_torch_and_no_sktransfer(serving_python):
    proc = subprocess.run(
        [str(serving_python), "-I", "-c",
         "import importlib.util as u; print([m for m in ('torch', 'sktransfer', 'sklearn', "
         "'onnxruntime', 'onnxruntime_extensions') if u.find_spec(m)])"],
        check=True, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "['onnxruntime', 'onnxruntime_extensions']"


def mlp(width=64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(width, 16), nn.Tanh(), nn.Linear(16, 12), nn.ReLU())


@pytest.fixture(scope="module")
def rows(digits):
    images, labels = digits
    X = (images[:150].reshape(150, -1) / 255.0).astype(np.float32)
    return X, labels[:150] % 3


@pytest.fixture(scope="module")
def transformer(rows):
    """One fitted transformer for the pipelines below: its network is exported once
    (export_onnx keeps the last export per estimator while it is unchanged)."""
    X, _ = rows
    return PretrainedFeatureTransformer(mlp()).fit(X)


def fitted_pipeline(transformer, X, y, *heads):
    """``make_pipeline(transformer, *heads)`` with the heads fitted on its features."""
    Z = transformer.transform(X)
    for head in heads[:-1]:
        Z = head.fit_transform(Z, y)
    heads[-1].fit(Z, y)
    return make_pipeline(transformer, *heads)


@pytest.fixture(scope="module")
def classifier(rows, tmp_path_factory):
    X, y = rows
    names = np.array(["cat", "dog", "eel"])[y]  # string labels come back as strings
    clf = FineTunedClassifier(mlp(), **FAST).fit(X, names)
    path = tmp_path_factory.mktemp("clf") / "clf.onnx"
    return clf, path, export_onnx(clf, path, X[:20])


# -- tensors: a module's float rows ---------------------------------------------------

@pytest.mark.parametrize("head", [
    [StandardScaler(), PCA(8, random_state=0), LogisticRegression(max_iter=500)],
    [SVC(probability=True, random_state=0)],
    [RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0)],
], ids=["scaler-pca-logreg", "svc", "forest"])
def test_a_pipeline_with_scikit_learn_heads_serves_without_torch(serving_python, rows,
                                                                transformer, head, tmp_path):
    X, y = rows
    pipe = fitted_pipeline(transformer, X, y, *head)
    path = tmp_path / "pipe.onnx"
    check = export_onnx(pipe, path, X[:20])
    assert check.outputs == ["label", "probabilities"]
    if isinstance(head[0], StandardScaler):
        served = serve_without_torch(serving_python, path, X[20:], tmp_path)
    else:  # served in this process (a fresh one costs seconds)
        names = ["label", "probabilities"]
        served = dict(zip(names, inference_session(str(path)).run(names, {"X": X[20:]})))
    np.testing.assert_array_equal(served["label"], pipe.predict(X[20:]))
    assert served["probabilities"].shape == (len(X) - 20, 3)
    np.testing.assert_allclose(served["probabilities"], pipe.predict_proba(X[20:]), atol=1e-4)


def test_a_fine_tuned_classifier_gives_labels_and_probabilities(serving_python, classifier,
                                                                rows, tmp_path):
    clf, path, check = classifier
    X, _ = rows
    assert check.label_agreement == 1.0 and check.max_abs_difference["probabilities"] < 1e-4
    served = serve_without_torch(serving_python, path, X, tmp_path)
    assert served["label"].dtype == object  # the classes are strings: so are the labels
    np.testing.assert_array_equal(served["label"], clf.predict(X))
    np.testing.assert_allclose(served["probabilities"], clf.predict_proba(X), atol=1e-4)


def test_the_graph_records_what_a_server_needs(classifier):
    clf, path, _ = classifier
    model = onnx.load(path)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["sktransfer_version"] == sktransfer.__version__
    assert json.loads(meta["sktransfer_classes"]) == ["cat", "dog", "eel"]
    assert json.loads(meta["sktransfer_params"])[0]["max_epochs"] == 3
    assert json.loads(meta["sktransfer_input"])["layout"] == "float32 (None, 64)"
    assert [i.name for i in model.graph.input] == ["X"]
    assert [o.name for o in model.graph.output] == ["label", "probabilities"]
    assert not any(n.op_type == "ZipMap" for n in model.graph.node)


def test_a_regressor_and_a_transformer_give_their_variable(rows, transformer, tmp_path):
    X, y = rows
    reg = FineTunedRegressor(mlp(), **FAST).fit(X, np.c_[y * 10.0 + 3, -y])
    export_onnx(reg, tmp_path / "reg.onnx", X[:20])
    served = {"variable": inference_session(str(tmp_path / "reg.onnx")).run(None, {"X": X})[0]}
    np.testing.assert_allclose(served["variable"], reg.predict(X), rtol=1e-5, atol=1e-4)

    export_onnx(transformer, tmp_path / "pft.onnx", X[:5])
    served = inference_session(str(tmp_path / "pft.onnx")).run(None, {"X": X})[0]
    np.testing.assert_allclose(served, transformer.transform(X), atol=1e-5)


def test_a_pooling_set_after_fit_is_the_one_exported(rows, tmp_path):
    # pooling may change without refitting; the export kept from before must not serve.
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    X, _ = rows
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 16), nn.Unflatten(1, (4, 4)), nn.Tanh(), nn.Flatten())
    pft = PretrainedFeatureTransformer(net, layers=["2"], pooling="avg").fit(X)
    export_onnx(pft, tmp_path / "avg.onnx", X[:10])
    pft.set_params(pooling="max")
    export_onnx(pft, tmp_path / "max.onnx", X[:10])
    served = inference_session(str(tmp_path / "max.onnx")).run(None, {"X": X})[0]
    np.testing.assert_allclose(served, pft.transform(X), atol=1e-5)
    register_converters()
    model = to_onnx(pft, initial_types=[("X", FloatTensorType([None, 64]))], target_opset=18)
    served = inference_session(model.SerializeToString()).run(None, {"X": X})[0]
    np.testing.assert_allclose(served, pft.transform(X), atol=1e-5)


def test_unions_column_transformers_and_clusterers_are_checked_by_their_outputs(
        rows, transformer, tmp_path):
    # skl2onnx names these outputs after the step ("union", "transformed_column",
    # "label" and "scores"), not "variable".
    X, _ = rows
    torch.manual_seed(1)
    other = PretrainedFeatureTransformer(nn.Sequential(nn.Linear(64, 5), nn.ReLU())).fit(X)
    columns = ColumnTransformer([("net", transformer, list(range(64)))]).fit(X)
    clusters = make_pipeline(transformer, KMeans(3, n_init=1, random_state=0)).fit(X)
    for model in (make_union(transformer, other), columns):
        check = export_onnx(model, tmp_path / "t.onnx", X[:10])
        served = inference_session(str(tmp_path / "t.onnx")).run(None, {"X": X})[0]
        np.testing.assert_allclose(served, model.transform(X), atol=1e-5)
        assert list(check.max_abs_difference) == check.outputs[:1]
    check = export_onnx(clusters, tmp_path / "k.onnx", X[:10])
    label = inference_session(str(tmp_path / "k.onnx")).run(None, {"X": X})[0]
    np.testing.assert_array_equal(label, clusters.predict(X))
    assert check.label_agreement == 1.0


def test_a_multilabel_classifier_gives_an_indicator(rows, tmp_path):
    X, y = rows
    Y = np.c_[y == 0, y == 1, X[:, 10] > 0.3].astype(int)
    clf = FineTunedClassifier(mlp(), **FAST).fit(X, Y)
    export_onnx(clf, tmp_path / "ml.onnx", X[:20])
    label, proba = inference_session(str(tmp_path / "ml.onnx")).run(None, {"X": X})
    served = {"label": label, "probabilities": proba}
    assert served["label"].dtype == np.int64 and served["label"].shape == (len(X), 3)
    np.testing.assert_array_equal(served["label"], clf.predict(X))
    np.testing.assert_allclose(served["probabilities"], clf.predict_proba(X), atol=1e-4)


def test_skl2onnx_converts_a_pipeline_after_one_registration(rows, transformer):
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    X, y = rows
    pipe = fitted_pipeline(transformer, X, y, LogisticRegression())
    register_converters()
    model = to_onnx(pipe, initial_types=[("X", FloatTensorType([None, 64]))],
                    options={id(pipe[-1]): {"zipmap": False}}, target_opset=18)
    label, proba = inference_session(model.SerializeToString()).run(None, {"X": X})
    np.testing.assert_array_equal(label, pipe.predict(X))
    np.testing.assert_allclose(proba, pipe.predict_proba(X), atol=1e-4)


def test_an_int8_graph_agrees_on_labels(classifier, rows, tmp_path):
    X, y = rows
    clf = classifier[0]
    check = export_onnx(clf, tmp_path / "q.onnx", X[:50], quantize="int8")
    assert check.label_agreement >= 0.95
    ops = {n.op_type for n in onnx.load(tmp_path / "q.onnx").graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear"}


def test_a_lora_adapted_model_exports_merged(rows, tmp_path):
    X, y = rows
    clf = FineTunedClassifier(mlp(), adapter="lora", **FAST).fit(X, y)
    check = export_onnx(clf, tmp_path / "lora.onnx", X[:30])
    assert check.label_agreement == 1.0 and check.max_abs_difference["probabilities"] < 1e-4
    names = " ".join(i.name for i in onnx.load(tmp_path / "lora.onnx").graph.initializer)
    assert "lora" not in names.lower()  # merged: plain weights only


# -- refusals: nothing written, the problem named ------------------------------------

def test_a_step_skl2onnx_cannot_convert_is_named(rows, transformer, tmp_path):
    X, y = rows
    pipe = fitted_pipeline(transformer, X, y, FunctionTransformer(np.tanh),
                           LogisticRegression())
    with pytest.raises(ExportError, match="FunctionTransformer"):
        export_onnx(pipe, tmp_path / "no.onnx", X[:5])
    assert os.listdir(tmp_path) == []


def test_a_graph_that_disagrees_with_the_model_is_not_written(classifier, rows, tmp_path,
                                                              monkeypatch):
    # The self-check must catch a wrong graph: the converted graph with one
    # weight of the network moved.
    from sktransfer.export import writer

    clf, X = classifier[0], rows[0]
    convert = writer._convert

    def moved(*args):
        graph = convert(*args)
        weight = max(graph.graph.initializer, key=lambda t: len(t.raw_data))
        values = onnx.numpy_helper.to_array(weight) + 0.5
        weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
        return graph

    monkeypatch.setattr(writer, "_convert", moved)
    with pytest.raises(ExportError, match="nothing was written"):
        export_onnx(clf, tmp_path / "bad.onnx", X[:40])
    assert os.listdir(tmp_path) == []


def test_a_fine_tuner_before_another_step_is_refused_by_name(classifier, rows, transformer,
                                                             tmp_path):
    # There scikit-learn calls the fine-tuner's transform (its embeddings), not
    # predict: a graph of its predictions would serve other numbers.
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    X, y = rows
    clf = classifier[0]
    reg = FineTunedRegressor(mlp(), **FAST).fit(X, np.c_[y, -y] * 1.0)
    register_converters()
    for step in (clf, reg):
        head = Ridge().fit(step.transform(X), y)
        for model in (make_pipeline(step, head), make_union(step, transformer)):
            with pytest.raises(ExportError, match="must be its pipeline's last step"):
                export_onnx(model, tmp_path / "mid.onnx", X[:5])
            with pytest.raises(ExportError, match="must be its pipeline's last step"):
                to_onnx(model, initial_types=[("X", FloatTensorType([None, 64]))],
                        target_opset=18)
    assert os.listdir(tmp_path) == []


def test_an_unserved_input_is_refused_by_name(rows, transformer, tmp_path):
    X, _ = rows
    pft = transformer
    with pytest.raises(ValueError, match="quantize"):
        export_onnx(pft, tmp_path / "a.onnx", X[:4], quantize="int4")
    with pytest.raises(ExportError, match="no fitted sktransfer estimator"):
        export_onnx(LogisticRegression().fit(X, rows[1]), tmp_path / "b.onnx", X[:4])
    int8 = PretrainedFeatureTransformer(mlp(), runtime="onnx", quantize="int8").fit(X[:20])
    with pytest.raises(ExportError, match="runs its network in int8.*quantize='int8'"):
        export_onnx(int8, tmp_path / "c.onnx", X[:4])
    assert os.listdir(tmp_path) == []


# -- images: uint8 (N, H, W, C), resize, crop and normalize in the graph --------------

@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_the_image_graph_is_the_torch_preprocessing_within_one_level(interpolation):
    import onnxruntime

    rng = np.random.default_rng(0)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    # A crop of 72 is three blocks of output pixels (32, 32 and a short one of 8).
    for resize, crop in [(36, 32), (40, 32), (16, 16), (80, 72)]:
        prep = ImagePreprocess(resize, crop, mean, std, interpolation=interpolation)
        session = onnxruntime.InferenceSession(image_graph(prep)[0].SerializeToString())
        for h, w, c in [(32, 32, 3), (40, 48, 3), (64, 50, 3), (37, 91, 3), (20, 20, 1),
                        (130, 97, 3), (300, 41, 3)]:
            # Random pixels, and the extremes: white (the largest sums; a bilinear
            # graph does not clamp) and a 0/255 checkerboard (bicubic overshoots).
            checker = (np.indices((h, w)).sum(0) % 2 * 255).astype(np.uint8)
            X = np.stack([rng.integers(0, 256, (h, w, c), dtype=np.uint8),
                          np.full((h, w, c), 255, np.uint8),
                          np.repeat(checker[..., None], c, axis=2)])
            expected = prep(torch.from_numpy(X).permute(0, 3, 1, 2).contiguous()).numpy()
            got = session.run(None, {"X": X})[0]
            assert got.shape == expected.shape
            levels = np.abs(got - expected) * np.array(std).reshape(1, 3, 1, 1) * 255
            assert levels.max() <= 1.0 + 1e-3, (resize, crop, h, w)


def test_a_grayscale_network_gets_one_channel_from_the_image_graph():
    import onnxruntime

    prep = ImagePreprocess(20, 16, mean=(0.5,), std=(0.25,), channels=1)
    model, serving = image_graph(prep)
    assert serving.layout == "uint8 (N, H, W, 1), one channel, any H and W"
    session = onnxruntime.InferenceSession(model.SerializeToString())
    X = np.random.default_rng(1).integers(0, 256, (3, 30, 25, 1), dtype=np.uint8)
    got = session.run(None, {"X": X})[0]
    expected = prep(torch.from_numpy(X).permute(0, 3, 1, 2).contiguous()).numpy()
    assert got.shape == expected.shape == (3, 1, 16, 16)
    assert np.abs(got - expected).max() * 0.25 * 255 <= 1.0 + 1e-3


def smooth_images(digits, n, h, w, channels=3):
    """Digits blown up to ``h x w`` (photographs are smooth: resizing noise would
    put every pixel at a rounding boundary)."""
    import PIL.Image

    images = digits[0][:n]
    out = [np.asarray(PIL.Image.fromarray(im).resize((w, h), PIL.Image.BILINEAR))
           for im in images]
    out = np.stack(out)[..., None]
    return np.repeat(out, channels, axis=-1) if channels == 3 else out


@pytest.mark.slow
def test_resnet18_and_logistic_regression_serve_raw_images_of_any_size(serving_python, digits,
                                                                         tmp_path):
    X, y = smooth_images(digits, 24, 40, 48), digits[1][:24] % 3
    pipe = make_pipeline(PretrainedFeatureTransformer("torchvision:resnet18", weights=None,
                                                      image_size=32, random_state=0),
                         LogisticRegression(max_iter=500)).fit(X, y)
    check = export_onnx(pipe, tmp_path / "resnet.onnx", X)
    assert check.max_abs_difference["probabilities"] <= 1e-3
    session = inference_session(str(tmp_path / "resnet.onnx"))
    for Z in [smooth_images(digits, 3, 32, 32), smooth_images(digits, 2, 50, 37),
              smooth_images(digits, 2, 40, 48, channels=1)]:
        label, proba = session.run(None, {"X": Z})
        np.testing.assert_array_equal(label, pipe.predict(Z))
        np.testing.assert_allclose(proba, pipe.predict_proba(Z), atol=1e-3)
    served = serve_without_torch(serving_python, tmp_path / "resnet.onnx", Z, tmp_path)
    np.testing.assert_array_equal(served["label"], pipe.predict(Z))
    np.testing.assert_allclose(served["probabilities"], pipe.predict_proba(Z), atol=1e-3)


# -- text: strings in, tokenized in the graph -----------------------------------------

TRICKY = ["Hello, WORLD!!", "Café naïve résumé", "中文 words", "", "the cat " * 200,
          "  spaces   inside  ", "emoji ☃ and tabs\tok"]


def test_the_wordpiece_graph_tokenizes_as_minilm_does(minilm_path):
    backbone = load_backbone("hf:" + minilm_path)
    prep = backbone.preprocess
    graph, _ = text_graph(prep, prep(["a b"]))
    got = inference_session(graph.SerializeToString()).run(
        None, {"X": np.array(TRICKY, dtype=object)})
    expected = prep(TRICKY)  # truncated at max_length, padded to the longest
    for key, value in zip(expected, got):
        np.testing.assert_array_equal(value, expected[key].numpy(), err_msg=key)


#: Capitals BERT's normalizer lower-cases (and strips) beyond one character to one,
#: or in scripts the extensions' BertTokenizer does not lower-case.
CAPITALS = ["ΑΘΗΝΑ", "İSTANBUL", "ŁÓDŹ", "STRAẞE", "ΟΔΟΣ", "ՀԱՅԱՍՏԱՆ", "ᏣᎳᎩ", "Ǆ ǅ K Å",
            "ÉCOLE МОСКВА"]

#: Every character of these blocks that has a lower-case or upper-case form.
CASED_BLOCKS = [(0x00C0, 0x0100), (0x0100, 0x0180), (0x0180, 0x0250), (0x0370, 0x0400),
                (0x0400, 0x0530), (0x0530, 0x0590), (0x10A0, 0x1100), (0x13A0, 0x1400),
                (0x1E00, 0x2000), (0x10400, 0x10450)]


def cased_characters():
    chars = [chr(c) for start, stop in CASED_BLOCKS for c in range(start, stop)]
    return [c for c in chars if c.lower() != c or c.upper() != c] + ["İ", "ẞ", "K"]


def casing_graph(casing):
    """A graph of the casing step alone: strings -> strings."""
    from onnx import TensorProto, helper

    from sktransfer.backbones.onnx_casing import lowered_texts
    from sktransfer.backbones.onnx_graph import GraphBuilder

    g = GraphBuilder()
    g.rename(lowered_texts(g, "X", casing), "Y")
    model = g.model(helper.make_tensor_value_info("X", TensorProto.STRING, ["N"]), ["Y"],
                    {"Y": TensorProto.STRING})
    session = inference_session(model.SerializeToString())
    return lambda texts: session.run(None, {"X": np.array(texts, dtype=object)})[0].tolist()


def test_the_wordpiece_graph_lower_cases_capitals_of_any_script_as_minilm_does(minilm_path):
    """MiniLM's normalizer lower-cases and strips accents; the extensions' operator
    alone made [UNK] of Greek, Turkish, Polish and German capitals."""
    prep = load_backbone("hf:" + minilm_path).preprocess
    graph, _ = text_graph(prep, prep(["a b"]))
    ids = inference_session(graph.SerializeToString()).run(
        None, {"X": np.array(CAPITALS, dtype=object)})[0]
    np.testing.assert_array_equal(ids, prep(CAPITALS)["input_ids"].numpy())


def test_the_casing_graph_is_the_tokenizers_normalizer_on_every_cased_character(minilm_path):
    """Character by character, where one becomes several (İ, ǰ, ΐ) or none."""
    from sktransfer.backbones.onnx_casing import Casing

    normalizer = load_backbone("hf:" + minilm_path).preprocess.tokenizer \
        .backend_tokenizer.normalizer
    chars = cased_characters()
    got = casing_graph(Casing(strip_accents=True, lowercase=True))(chars)
    assert got == [normalizer.normalize_str(c) for c in chars]


def test_the_casing_graph_is_str_lower_with_its_final_sigma():
    from sktransfer.backbones.onnx_casing import Casing

    texts = cased_characters() + ["ΟΔΟΣ ΣΑΣ", "ΟΔΟΣ'", "ΑΣ\u0301Α", "Σ", "ΣΣ.", "1Σ", "ΑΣ ΣΑ",
                                  "ǅΣ", ""]
    assert casing_graph(Casing(python_lower=True))(texts) == [t.lower() for t in texts]


@pytest.fixture(scope="module")
def tiny_roberta_path(tmp_path_factory):
    """A one-layer RoBERTa with a byte-level BPE vocabulary trained here (offline)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    folder = str(tmp_path_factory.mktemp("tiny_roberta"))
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["the cat sat on the mat", "a dog ran far", "héllo wörld 123"] * 9,
                            vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(folder)
    RobertaTokenizerFast.from_pretrained(folder).save_pretrained(folder)
    torch.manual_seed(0)
    RobertaModel(RobertaConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=64,
                               max_position_embeddings=130, pad_token_id=1)).save_pretrained(
        folder)
    return folder


def test_the_byte_level_bpe_graph_tokenizes_as_roberta_does(tiny_roberta_path):
    prep = load_backbone("hf:" + tiny_roberta_path).preprocess
    graph, _ = text_graph(prep, prep(["a b"]))
    texts = TRICKY[:4] + ["the cat " * 20, " leading space", "héllo wörld"]
    got = inference_session(graph.SerializeToString()).run(
        None, {"X": np.array(texts, dtype=object)})
    expected = prep(texts)
    for key, value in zip(expected, got):
        np.testing.assert_array_equal(value, expected[key].numpy(), err_msg=key)


@pytest.fixture(scope="module")
def lowercasing_roberta_path(tiny_roberta_path, tmp_path_factory):
    """The tiny RoBERTa in a sentence-transformers pipeline whose Transformer lower-cases."""
    import shutil

    folder = tmp_path_factory.mktemp("lowercasing_roberta") / "model"
    shutil.copytree(tiny_roberta_path, folder)
    modules = [{"idx": 0, "name": "0", "path": "",
                "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling"}]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 64, "do_lower_case": True}))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}))
    return str(folder)


def test_the_byte_level_bpe_graph_lower_cases_as_the_pipeline_does(lowercasing_roberta_path):
    prep = load_backbone("hf:" + lowercasing_roberta_path).preprocess
    assert prep.lowercase
    graph, _ = text_graph(prep, prep(["a b"]))
    session = inference_session(graph.SerializeToString())
    # A call with non-ASCII text takes the character tables; an ASCII one skips them.
    for texts in (["The Cat SAT on the MAT", "HÉLLO WÖRLD", "ΟΔΟΣ", "İ", "a dog ran far"],
                  ["The Cat SAT on the MAT", "A DOG ran Far"]):
        got = session.run(None, {"X": np.array(texts, dtype=object)})
        expected = prep(texts)
        for key, value in zip(expected, got):
            np.testing.assert_array_equal(value, expected[key].numpy(), err_msg=key)


def test_a_tokenizer_the_extensions_cannot_express_is_refused_by_name(tiny_roberta_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    prep = load_backbone("hf:" + tiny_roberta_path).preprocess
    word_level = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    prep.tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level)
    with pytest.raises(UnsupportedPreprocessing, match="WordLevel"):
        text_graph(prep, {"input_ids": None, "attention_mask": None})


@pytest.mark.slow
def test_a_bert_pipeline_on_raw_strings_serves_without_torch(serving_python, tiny_bert_path,
                                                              tmp_path):
    texts = ["the cat sat on the mat", "a dog ran far", "the big red dog", "a small blue cat",
             "the cat ran", "a dog sat on a mat", "big cat", "small dog"] * 2
    y = np.arange(len(texts)) % 2
    pipe = make_pipeline(PretrainedFeatureTransformer("hf:" + tiny_bert_path),
                         LogisticRegression()).fit(texts, y)
    check = export_onnx(pipe, tmp_path / "bert.onnx", texts)
    assert check.max_abs_difference["probabilities"] < 1e-4
    new = ["red cat sat far", "a", "dog dog dog on the big small mat"]
    served = serve_without_torch(serving_python, tmp_path / "bert.onnx",
                                 np.array(new, dtype=object), tmp_path)
    np.testing.assert_array_equal(served["label"], pipe.predict(new))
    np.testing.assert_allclose(served["probabilities"], pipe.predict_proba(new), atol=1e-4)


@pytest.mark.parametrize("n", [1, 5, 11])
def test_texts_run_in_length_sorted_chunks_and_come_back_in_order(tiny_bert_path, tmp_path, n):
    """More texts than ``batch_size``, of very different lengths: each chunk is cut to
    its own longest text, and every row comes back where it was."""
    rng = np.random.RandomState(n)
    words = "the cat dog sat ran on a mat big small red blue far".split()
    texts = [" ".join(rng.choice(words, rng.randint(1, 30))) for _ in range(n)]
    transformer = PretrainedFeatureTransformer("hf:" + tiny_bert_path, batch_size=4).fit(texts)
    export_onnx(transformer, tmp_path / "chunks.onnx", texts)
    graph = onnx.load(str(tmp_path / "chunks.onnx")).graph
    assert [n.op_type for n in graph.node if n.output[0].endswith("ck_chunk_outputs")] == ["Loop"]
    session = inference_session(str(tmp_path / "chunks.onnx"))
    served = session.run(None, {"X": np.array(texts, dtype=object)})[0]
    np.testing.assert_allclose(served, transformer.transform(texts), atol=1e-5)
    np.testing.assert_allclose(session.run(None, {"X": np.array(texts[::-1], dtype=object)})[0],
                               served[::-1], atol=1e-5)


@pytest.mark.slow
def test_minilm_with_logistic_regression_float_and_int8(serving_python, minilm_path, tmp_path):
    texts = ["the market rallied today", "stocks fell sharply", "my cat likes fish",
             "the dog sleeps all day", "rain is expected tomorrow", "sunny and warm weather",
             "investors sold their shares", "a kitten chased the ball"] * 3
    y = np.array([0, 0, 1, 1, 2, 2, 0, 1] * 3)
    pipe = make_pipeline(PretrainedFeatureTransformer("hf:" + minilm_path),
                         LogisticRegression(max_iter=500)).fit(texts, y)
    check = export_onnx(pipe, tmp_path / "minilm.onnx", texts)
    assert check.label_agreement == 1.0
    assert check.max_abs_difference["probabilities"] < 1e-4
    served = serve_without_torch(serving_python, tmp_path / "minilm.onnx",
                                 np.array(TRICKY, dtype=object), tmp_path)
    np.testing.assert_array_equal(served["label"], pipe.predict(TRICKY))
    np.testing.assert_allclose(served["probabilities"], pipe.predict_proba(TRICKY), atol=1e-4)
    quantized = export_onnx(pipe, tmp_path / "minilm8.onnx", texts, quantize="int8")
    assert quantized.label_agreement >= 0.95
    ratio = os.path.getsize(tmp_path / "minilm8.onnx") / os.path.getsize(tmp_path / "minilm.onnx")
    assert ratio <= 0.4


# -- speech: float32 waveforms (N, T) at the model's rate --------------------------------

@pytest.mark.slow
def test_a_wav2vec2_model_and_a_classifier_serve_waveforms_of_another_length(serving_python,
                                                                             tmp_path):
    from audio import tiny  # tests/audio: a package beside this file

    path = tiny.build("wav2vec2-layer", tmp_path / "w2v")
    X = np.stack([tiny.tone(f, 0.5, phase=p) for f in (200, 300, 400, 500) for p in (0, 1)])
    y = np.arange(len(X)) % 2
    pipe = make_pipeline(PretrainedFeatureTransformer("hf:" + path, sampling_rate=tiny.RATE),
                         LogisticRegression()).fit(X, y)
    check = export_onnx(pipe, tmp_path / "speech.onnx", X)
    assert check.max_abs_difference["probabilities"] < 1e-4
    Z = np.stack([tiny.tone(f, 0.3) for f in (250, 450, 650)])  # one length per call
    served = serve_without_torch(serving_python, tmp_path / "speech.onnx", Z, tmp_path)
    np.testing.assert_array_equal(served["label"], pipe.predict(Z))
    np.testing.assert_allclose(served["probabilities"], pipe.predict_proba(Z), atol=1e-4)
    with pytest.raises(ExportError, match="one length per call"):
        export_onnx(pipe, tmp_path / "no.onnx", [X[0], X[1, :4000]])
    with pytest.raises(ExportError, match="int16 samples"):
        export_onnx(pipe, tmp_path / "no.onnx", (X * 32767).astype(np.int16))
    assert not os.path.exists(tmp_path / "no.onnx")
    # A clip with a DC offset and little signal: its variance is tiny, so a mean
    # off by float32 summation order (0.15 in probability before) is blown up.
    session = inference_session(str(tmp_path / "speech.onnx"))
    for Z in (np.full((1, 8000), 0.3, np.float32), 0.3 + 0.004 * Z):
        Z = Z.astype(np.float32)
        np.testing.assert_allclose(session.run(None, {"X": Z})[1], pipe.predict_proba(Z),
                                   atol=1e-4)


def test_a_log_mel_extractor_is_refused_by_name(tmp_path):
    from sktransfer.backbones.onnx_audio import audio_graph

    from audio import tiny

    prep = load_backbone("hf:" + tiny.build("whisper", tmp_path / "whisper")).preprocess
    with pytest.raises(UnsupportedPreprocessing, match="WhisperFeatureExtractor"):
        audio_graph(prep, {"input_features": None})

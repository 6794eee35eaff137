""":func:`export_onnx`: a fitted model as one ONNX file, checked against the model first.

The conversion is skl2onnx's, with sktransfer's converters registered
(:mod:`.convert`); this module chooses the served input from ``X_sample``,
asks for plain classifier outputs (no ZipMap), records what a server needs
to know in the graph's metadata, runs the graph in ONNX Runtime on
``X_sample`` and writes the file only when it agrees with the model.
"""

import json
from dataclasses import dataclass, field

import numpy as np
import onnx
from sklearn.base import is_classifier, is_regressor

from .._utils.files import write_atomically
from .._version import __version__
from ..backbones.onnx_audio import AUDIO_LAYOUT
from ..backbones.onnx_graph import OPSET
from ..backbones.onnx_preprocess import image_layout
from .convert import ALIASES, register_converters
from .network import ExportError
from .serving import inference_session, parts, sktransfer_steps

#: The largest difference of probabilities (or of features and predictions,
#: relative to their scale) the self-check accepts, by served input. Images
#: get more: the graph's resize may round a pixel one 8-bit level apart.
TOLERANCE = {"image": 1e-3, "text": 1e-4, "tensor": 1e-4, "audio": 1e-4}
#: int8 weights move outputs: the labels must agree on this share of samples,
#: and features and predictions stay within this relative error.
INT8_AGREEMENT, INT8_RELATIVE = 0.95, 0.1


@dataclass
class ExportCheck:
    """What :func:`export_onnx` wrote and how its graph compared with the model on ``X_sample``.

    Attributes
    ----------
    path : str
    outputs : list of str
        The graph's output names (``["label", "probabilities"]`` for a classifier).
    max_abs_difference : dict of {str: float}
        Per compared output (``"probabilities"``, ``"variable"``), the largest
        absolute difference between the graph and the model.
    label_agreement : float or None
        The share of samples given the model's label (classifiers).
    """

    path: str
    outputs: list
    max_abs_difference: dict = field(default_factory=dict)
    label_agreement: float = None


def export_onnx(model, path, X_sample, *, quantize=None):
    """Write a fitted model as one ONNX graph that serves without PyTorch.

    The graph takes the raw input the model takes, preprocessing included:
    uint8 images ``(N, H, W, C)`` (any N, H and W), a string tensor ``(N,)``
    for text, float32 waveforms ``(N, T)`` at the model's rate for speech
    (one length per call), float32 rows for a module's tensors. Its outputs are
    skl2onnx's: ``label`` and ``probabilities`` for a classifier (plain
    tensors, no ZipMap), ``variable`` for a regressor or a transformer
    (a union or column transformer keeps skl2onnx's name for its output;
    a clusterer gives ``label`` and ``scores``). It
    runs in ``onnxruntime`` alone (text graphs also need
    ``onnxruntime-extensions``' operators).

    Before writing, the graph is run on ``X_sample`` and compared with the
    model: a label that differs, or probabilities further apart than 1e-4
    (1e-3 for images; features and predictions relative to their scale),
    and nothing is written.

    Parameters
    ----------
    model : estimator
        A fitted :class:`~sktransfer.PretrainedFeatureTransformer`,
        :class:`~sktransfer.FineTunedClassifier` or
        :class:`~sktransfer.FineTunedRegressor`, or a scikit-learn
        ``Pipeline``, ``FeatureUnion`` or ``ColumnTransformer`` holding one
        whose other steps skl2onnx converts. A fine-tuner must be its
        pipeline's last step.
    path : str or os.PathLike
        The ``.onnx`` file to write (atomically: a failure leaves nothing).
    X_sample : array-like
        A few samples as the model takes them: they fix the served input's
        type and check the graph.
    quantize : None or "int8", default=None
        ONNX Runtime's dynamic int8 quantization of the network. The check
        then asks for 95% of labels alike, and features and predictions
        within a relative error of 0.1.

    Returns
    -------
    ExportCheck

    Raises
    ------
    ExportError
        Naming what cannot be exported (a step skl2onnx cannot convert, a
        preprocessing no graph expresses), or how the graph disagreed.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from torch import nn
    >>> from sktransfer import PretrainedFeatureTransformer, export_onnx
    >>> X = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    >>> pft = PretrainedFeatureTransformer(nn.Linear(3, 2)).fit(X)
    >>> check = export_onnx(pft, os.path.join(tempfile.mkdtemp(), "m.onnx"), X)
    >>> check.outputs
    ['variable']
    """
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    ours = sktransfer_steps(model)
    if not ours:
        raise ExportError(f"{type(model).__name__} holds no fitted sktransfer estimator; "
                          f"convert it with skl2onnx.to_onnx directly")
    int8 = [type(s).__name__ for s in ours if getattr(s, "quantize", None) == "int8"]
    if int8 and quantize is None:
        raise ExportError(f"{int8[0]} runs its network in int8 (quantize='int8'), which a "
                          f"float graph does not compute: export with quantize='int8'")
    modality = ours[0].backbone_.modality
    X, initial_type = _served_input(modality, X_sample)
    register_converters()
    graph = _convert(model, initial_type, quantize)
    _set_metadata(graph, model, ours, modality, initial_type)
    serialized = graph.SerializeToString()
    check = _check(serialized, model, X, modality, quantize)
    check.path = str(path)

    def write(temporary):
        with open(temporary, "wb") as fh:
            fh.write(serialized)

    write_atomically(path, write)
    return check


def _served_input(modality, X):
    """``(X as the graph takes it, skl2onnx initial type)``."""
    from skl2onnx.common.data_types import (FloatTensorType, StringTensorType,
                                            UInt8TensorType)
    if modality == "image":
        X = np.asarray(X)
        if X.dtype != np.uint8 or X.ndim != 4 or X.shape[-1] not in (1, 3):
            raise ExportError(f"an image model's graph takes uint8 arrays (N, H, W, C) with "
                              f"C = 1 or 3; X_sample has dtype {X.dtype} and shape {X.shape}")
        # C is left free: the graph repeats grayscale to RGB as the estimator does.
        return X, UInt8TensorType([None, None, None, None])
    if modality == "text":
        texts = list(X)
        if not all(isinstance(t, str) for t in texts):
            raise ExportError("a text model's graph takes strings: X_sample must hold str")
        return np.array(texts, dtype=object), StringTensorType([None])
    if modality == "tensor":
        X = np.asarray(X, dtype=np.float32)
        return X, FloatTensorType([None, *X.shape[1:]])
    if modality == "audio":
        lengths = {len(clip) for clip in X} if isinstance(X, (list, tuple)) else set()
        if len(lengths) > 1:
            raise ExportError(f"a speech model's graph takes float32 waveforms (N, T) of one "
                              f"length per call; X_sample holds clips of {sorted(lengths)} "
                              f"samples")
        X = np.asarray(X)
        if X.dtype.kind in "iub":
            raise ExportError(f"a speech model's graph takes float32 waveforms in [-1, 1]; "
                              f"X_sample holds {X.dtype} samples (16-bit PCM: divide by "
                              f"32768)")
        X = X.astype(np.float32)
        if X.ndim != 2:
            raise ExportError(f"a speech model's graph takes float32 waveforms (N, T) of one "
                              f"length; X_sample has shape {X.shape}")
        return X, FloatTensorType([None, None])
    raise ExportError(f"export_onnx does not serve {modality} models in this version")


def _convert(model, initial_type, quantize):
    from skl2onnx import to_onnx
    options = {}
    for step in parts(model):
        if type(step) in ALIASES:
            options[id(step)] = {"quantize": quantize}
        elif is_classifier(step):
            options[id(step)] = {"zipmap": False}
    try:
        return to_onnx(model, initial_types=[("X", initial_type)], options=options,
                       target_opset={"": OPSET, "ai.onnx.ml": 3})
    except ExportError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        unconvertible = [f"{type(s).__name__}" for s in parts(model) if first and
                         type(s).__name__ in str(exc)]
        which = f" (step {unconvertible[0]})" if unconvertible else ""
        raise ExportError(f"skl2onnx could not convert {type(model).__name__}{which}: "
                          f"{type(exc).__name__}: {first}") from exc


def _set_metadata(graph, model, ours, modality, initial_type):
    from skl2onnx.common.data_types import UInt8TensorType
    if modality == "image":
        layout = image_layout(ours[0].backbone_.preprocess.channels)
    else:
        layout = {"text": "string (N,)",
                  "audio": AUDIO_LAYOUT,
                  "tensor": f"float32 {tuple(initial_type.shape)}"}[modality]
    props = {
        "sktransfer_version": __version__,
        "sktransfer_model": type(model).__name__,
        "sktransfer_steps": json.dumps([type(s).__name__ for s in parts(model)]),
        "sktransfer_params": json.dumps([_params(s) for s in ours]),
        "sktransfer_input": json.dumps({"name": "X", "modality": modality, "layout": layout,
                                        "uint8": isinstance(initial_type, UInt8TensorType)}),
    }
    if hasattr(model, "classes_"):
        props["sktransfer_classes"] = json.dumps(np.asarray(model.classes_).tolist())
    onnx.helper.set_model_props(graph, props)
    graph.producer_name, graph.producer_version = "sktransfer", __version__


def _params(estimator):
    return {k: v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)
            for k, v in estimator.get_params(deep=False).items()}


def _check(serialized, model, X, modality, quantize):
    """Run the graph on ``X`` and compare with the model; an ExportError where they differ."""
    session = inference_session(serialized)
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, {"X": X})))
    check = ExportCheck(path="", outputs=names)
    tolerance = TOLERANCE[modality]
    if is_classifier(model):
        _check_labels(check, got["label"], model.predict(X), quantize)
        if hasattr(model, "predict_proba") and "probabilities" in got:
            diff = _max_diff(got["probabilities"], model.predict_proba(X))
            check.max_abs_difference["probabilities"] = diff
            if not quantize and diff > tolerance:
                raise ExportError(f"the graph's probabilities differ from the model's by "
                                  f"{diff:.2e} (> {tolerance:g}): nothing was written")
        return check
    if "label" in got and not is_regressor(model) and hasattr(model, "predict"):
        # A clusterer or another labelling model: its labels, exactly.
        _check_labels(check, got["label"], model.predict(X), quantize)
        return check
    if not (is_regressor(model) or hasattr(model, "transform")):
        raise ExportError(f"export_onnx checks classifiers, regressors, transformers and "
                          f"labelling models; {type(model).__name__}'s graph gives {names}")
    expected = model.predict(X) if is_regressor(model) else model.transform(X)
    expected = np.asarray(expected, np.float64).reshape(len(X), -1)
    # skl2onnx names a regressor's or transformer's output "variable", a
    # union's or column transformer's after the step: the first output is it.
    name = "variable" if "variable" in got else names[0]
    out = got[name].reshape(len(X), -1)
    diff = _max_diff(out, expected)
    check.max_abs_difference[name] = diff
    scale = max(1.0, float(np.abs(expected).max()))
    allowed = INT8_RELATIVE if quantize else tolerance
    if diff > allowed * scale:
        raise ExportError(f"the graph's outputs differ from the model's by {diff:.2e} "
                          f"(> {allowed:g} x {scale:.3g}): nothing was written")
    return check


def _check_labels(check, served, expected, quantize):
    """Record the share of samples (rows, for a multilabel indicator) given the
    model's labels; an ExportError below all of them (95% for an int8 graph)."""
    n = len(served)
    expected = np.asarray(expected)
    agreement = float(np.mean(np.all(served.reshape(n, -1) == expected.reshape(n, -1),
                                     axis=1)))
    check.label_agreement = agreement
    if agreement < (INT8_AGREEMENT if quantize else 1.0):
        raise ExportError(f"the graph gives a label other than the model's on "
                          f"{1 - agreement:.0%} of X_sample: nothing was written")


def _max_diff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ExportError(f"the graph's output has shape {a.shape}, the model's {b.shape}")
    return float(np.abs(a - b).max()) if a.size else 0.0

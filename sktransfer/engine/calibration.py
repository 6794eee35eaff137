"""Static int8 for the OpenVINO engine: calibrated by NNCF at ``fit``, kept with the estimator.

``runtime="openvino", quantize="int8"`` runs a network that NNCF (OpenVINO's
own quantization library) quantized after training: int8 weights, and int8
activations whose ranges come from running the float network over some of
the fit samples. scikit-learn's ``fit`` is where those samples are at hand,
so the estimator calibrates there (:class:`Recorder` collects the inputs
its float engine is given while it runs over at most
:data:`~sktransfer.engine.resident.FIT_PROBE` fit samples;
:func:`quantized_graph` calls ``nncf.quantize``) and keeps the result as fitted state: a plain dict
(:func:`to_record`) holding the quantized graph in OpenVINO's own format,
the input names, the call settings it was calibrated for, and the identity
of the weights it was made from. Pickles and model files carry it like any
other fitted attribute; an engine built later (after loading, on a Dask
worker) reads it back (:func:`read_record`) instead of calibrating again,
and is refused when the estimator's network changed since.

A stored record is read as OpenVINO's own format only (:func:`check_record`):
OpenVINO's ``read_model`` guesses the format of bytes it is given, and an
ONNX graph may name files of the reading machine as its external weights,
which would turn a crafted model file into a way to read them. An IR graph
holds its weights in the blob beside it, and no extension library is ever
loaded.
"""

import contextlib
import hashlib
import logging
import os
import tempfile
import threading

import numpy as np

#: The most fit samples a calibration keeps (NNCF's default subset).
CALIBRATION_SAMPLES = 300

#: The keys of a stored record, and the type of each value.
RECORD_FIELDS = {"inputs": list, "settings": str, "identity": list, "graph": bytes,
                 "weights": bytes}

INSTALL = "pip install \"sktransfer[openvino]\""


def require_nncf():
    """The ``nncf`` module, or an ImportError naming the fix."""
    try:
        import nncf
    except ImportError as exc:
        raise ImportError(f"quantize='int8' with runtime='openvino' calibrates with NNCF: "
                          f"{INSTALL}") from exc
    return nncf


class Recorder:
    """The inputs a float engine is given, one sample at a time (NNCF's calibration items),
    up to :data:`CALIBRATION_SAMPLES`."""

    def __init__(self):
        self.samples = []

    def add(self, feed):
        """Keep the samples of one batch (``{input name: array}``) while there is room."""
        rows = min(len(next(iter(feed.values()))), CALIBRATION_SAMPLES - len(self.samples))
        self.samples.extend({name: array[i:i + 1].copy() for name, array in feed.items()}
                            for i in range(rows))


def quantized_graph(graph, samples):
    """``graph`` (an ``openvino.Model``, float32) quantized to int8 by NNCF on ``samples``.

    Transformers (a graph where a Softmax feeds a MatMul: attention) get
    NNCF's transformer scheme, which keeps the operations that int8 hurts
    most (LayerNorm, Softmax inputs) in float.
    """
    nncf = require_nncf()
    if not samples:
        raise ValueError("int8 calibration needs at least one fit sample")
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters,
                                                       OverflowFix)
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    advanced = AdvancedQuantizationParameters(
        # 7-bit weights everywhere: CPUs without VNNI (AVX2 alone) saturate
        # the 16-bit sums of 8-bit products, which left a small MLP's
        # probabilities 0.15 off even with the ranges below (0.010 with both;
        # RESULTS.md); the graph may be served on such a CPU whatever CPU
        # calibrated it.
        overflow_fix=OverflowFix.ENABLE,
        # The range of all the samples, not the mean of each sample's: a
        # sample of a few features (a row of a table) has a narrow range,
        # and their mean clipped half a small MLP's inputs (RESULTS.md).
        activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
    model_type = nncf.ModelType.TRANSFORMER if has_attention(graph) else None
    with _quiet():
        return nncf.quantize(graph, nncf.Dataset(samples), subset_size=len(samples),
                             model_type=model_type, advanced_parameters=advanced)


def has_attention(graph):
    """Whether a Softmax of ``graph`` feeds a MatMul (the attention of a transformer).

    Through a few operations between them: torch's export of
    ``scaled_dot_product_attention`` puts a NaN guard (``IsNaN``,
    ``Select``) after the Softmax.
    """
    for op in graph.get_ops():
        if op.get_type_name() != "Softmax":
            continue
        reached = [op]
        for _ in range(4):
            reached = [t.get_node() for node in reached for output in node.outputs()
                       for t in output.get_target_inputs()]
            if any(node.get_type_name() == "MatMul" for node in reached):
                return True
    return False


def to_record(model, keys, settings, identity):
    """The stored form of a quantized ``model``: plain values and bytes.

    Parameters
    ----------
    model : openvino.Model
    keys : tuple
        The input keys the graph was exported for (``(None,)`` for a lone tensor).
    settings : str
        The call settings it was calibrated for (layer taps, pooling).
    identity : list
        What the weights it was made from were (see
        :meth:`~sktransfer.engine.resident.ServesFromEngine._calibrate_int8`).
    """
    import openvino

    with tempfile.TemporaryDirectory(prefix="sktransfer-int8-") as folder:
        path = os.path.join(folder, "model.xml")
        openvino.save_model(model, path, compress_to_fp16=False)
        with open(path, "rb") as f:
            graph = f.read()
        with open(path[:-4] + ".bin", "rb") as f:
            weights = f.read()
    return {"inputs": list(keys), "settings": settings, "identity": identity,
            "graph": graph, "weights": weights}


def check_record(record, where="int8_networks_"):
    """Raise a ValueError naming what is wrong with a stored record, else return it.

    A record is a dict of exactly :data:`RECORD_FIELDS`, and its graph is an
    OpenVINO IR (XML whose root is ``<net>``): nothing else is ever given to
    OpenVINO's reader.
    """
    if not isinstance(record, dict) or set(record) != set(RECORD_FIELDS):
        raise ValueError(f"{where} is not a calibrated int8 network: a dict with the keys "
                         f"{sorted(RECORD_FIELDS)} is expected")
    for key, kind in RECORD_FIELDS.items():
        if not isinstance(record[key], kind):
            raise ValueError(f"{where}[{key!r}] must be a {kind.__name__}; got "
                             f"{type(record[key]).__name__}")
    head = record["graph"][:256].lstrip()
    if not (head.startswith(b"<?xml") and b"<net " in head):
        raise ValueError(f"{where}['graph'] is not an OpenVINO IR graph (XML with a <net> "
                         f"root); no other format is read")
    return record


def read_record(core, record):
    """The ``openvino.Model`` of a stored record (read from memory: nothing touches disk)."""
    import openvino

    check_record(record)
    weights = np.frombuffer(record["weights"], dtype=np.uint8).copy()
    try:
        return core.read_model(model=record["graph"], weights=openvino.Tensor(weights))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise ValueError(f"int8_networks_ holds a graph OpenVINO cannot read ({first}); "
                         f"fit the estimator again") from exc


def record_digest(record):
    """A hex digest of a record's graph and weights: what its numbers depend on."""
    digest = hashlib.blake2b(digest_size=20)
    for part in (record["graph"], record["weights"]):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


_QUIET_LOCK = threading.Lock()
_QUIET = {"depth": 0, "saved": None}


@contextlib.contextmanager
def _quiet():
    """Keep NNCF's notes (its logger) and progress bars (drawn on rich's shared
    console) off the user's screen: ``fit`` is the step the user sees, not the
    calibration inside it. Never by redirecting ``sys.stdout``, which would
    swallow other threads' output; calibrations in several threads at once
    restore the settings when the last one ends."""
    try:
        import rich
        console = rich.get_console()
    except ImportError:  # an NNCF without rich draws no bars
        console = None
    logger = logging.getLogger("nncf")
    with _QUIET_LOCK:
        if _QUIET["depth"] == 0:
            _QUIET["saved"] = (logger.level, None if console is None else console.quiet)
            logger.setLevel(logging.ERROR)
            if console is not None:
                console.quiet = True
        _QUIET["depth"] += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _QUIET["depth"] -= 1
            if _QUIET["depth"] == 0:
                level, quiet = _QUIET["saved"]
                logger.setLevel(level)
                if console is not None:
                    console.quiet = quiet

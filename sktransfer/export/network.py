"""One fitted sktransfer estimator as ONNX graphs: its preprocessing and its network.

The network is the one the estimator's own engines run (a private eval-mode
copy of the fitted module, adapters merged into the weights, the head on it
for the fine-tuners), exported by the same exporter as ``runtime="onnx"``
(:func:`sktransfer.engine.onnx.export_program`); the preprocessing graph
comes from the backbone's family (:mod:`sktransfer.backbones.onnx_preprocess`).
What follows the network (a softmax, the labels, the target scaling) is
added by the converter (:mod:`.convert`), in plain ONNX operators.
"""

import os
import tempfile
import weakref
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.inliner
import torch

from ..backbones.onnx_graph import OPSET, UnsupportedPreprocessing
from ..backbones.onnx_preprocess import preprocess_graph
from ..backbones.preprocess import ImagePreprocess
from ..engine.merge import merged_network
from ..engine.module import InferenceModule, private_copy
from ..engine.onnx import export_program, quantized
from ..engine.snapshot import ModelSnapshot
from ..finetune import FineTunedClassifier, FineTunedRegressor
from ..inputs.audio import audio_rule
from ..training.heads import BackboneWithHead
from .chunks import in_chunks

#: Strings the exporter traces a text network with: two rows of different lengths,
#: so that the padding and the attention mask take part in the graph.
EXAMPLE_TEXTS = ["an example sentence to trace the network with", "a short one"]


#: Each estimator's last exported float network: ``(snapshots, input key, ModelProto)``.
#: Held weakly, so it goes with the estimator; ``current()`` snapshots guard reuse.
_EXPORTED = weakref.WeakKeyDictionary()


class ExportError(ValueError):
    """A fitted model, or a part of it, that cannot be exported (the message says which)."""


@dataclass
class EstimatorGraphs:
    """The two graphs of one estimator and what the served input is.

    ``preprocess`` maps ``"X"`` to the network's inputs (by key), ``network``
    maps those to ``"output"``: the embedding for a transformer, the head's
    outputs for a fine-tuner.
    """

    preprocess: onnx.ModelProto
    network: onnx.ModelProto
    serving: object  # sktransfer.backbones.onnx_preprocess.ServingInput


def estimator_graphs(estimator, input_shape=None, quantize=None):
    """The :class:`EstimatorGraphs` of a fitted estimator.

    Parameters
    ----------
    estimator : PretrainedFeatureTransformer, FineTunedClassifier or FineTunedRegressor
    input_shape : sequence, optional
        The declared shape of the served input (None or a name for any
        length): a module's tensors are traced at that shape.
    quantize : None or "int8"
        ONNX Runtime's dynamic int8 quantization of the network graph.
    """
    backbone = estimator.backbone_
    keys, tensors = _example(backbone, estimator, input_shape)
    model = _float_network(estimator, keys, tensors)
    if quantize == "int8":
        model = _int8(model)
    if backbone.modality == "text":
        # Texts of a call in length-sorted chunks, as the estimator's own engine runs them.
        model = in_chunks(model, estimator.batch_size)
    example = tensors[0] if keys == (None,) else dict(zip(keys, tensors))
    try:
        pre, serving = preprocess_graph(backbone, example, _max_samples(estimator))
    except UnsupportedPreprocessing as exc:
        raise ExportError(str(exc)) from exc
    return EstimatorGraphs(pre, model, serving)


def _float_network(estimator, keys, tensors):
    """The exported float network, exported once per estimator, input shape,
    network parameters and model state: a float and an int8 export of one
    model trace it once."""
    sources = _sources(estimator)
    shape_key = (keys, tuple(tuple(t.shape[1:]) for t in tensors), _network_params(estimator))
    kept = _EXPORTED.get(estimator)
    if kept is not None:
        snapshots, key, model = kept
        if key == shape_key and len(snapshots) == len(sources) and all(
                s.source is m and s.current() for s, m in zip(snapshots, sources)):
            return model
    # Taken before exporting: a change made meanwhile is then seen as one.
    snapshots = tuple(ModelSnapshot(m) for m in sources)
    try:
        program = export_program(_network(estimator), keys, tensors, opset=OPSET)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ExportError(f"torch's ONNX exporter could not export the network of "
                          f"{estimator.backbone_.spec} ({type(exc).__name__}: {first})") from exc
    model = onnx.inliner.inline_local_functions(program.model_proto)
    _EXPORTED[estimator] = (snapshots, shape_key, model)
    return model


def _sources(estimator):
    if isinstance(estimator, (FineTunedClassifier, FineTunedRegressor)):
        return (estimator.backbone_.module, estimator.head_)
    return (estimator.backbone_.module,)


def _network_params(estimator):
    """What :func:`_network` reads besides the modules: ``layers`` and ``pooling``
    change what a transformer's network returns and may be set without refitting."""
    if isinstance(estimator, (FineTunedClassifier, FineTunedRegressor)):
        return ()
    return (tuple(estimator.layers) if estimator.layers else None, estimator.pooling)


def _network(estimator):
    """The eval-mode network the estimator's ``transform`` or ``predict_proba`` runs."""
    body = merged_network(private_copy(estimator.backbone_.module, None))
    if isinstance(estimator, (FineTunedClassifier, FineTunedRegressor)):
        return BackboneWithHead(body, private_copy(estimator.head_, None)).eval()
    layers = list(estimator.layers) if estimator.layers else None
    output = estimator.backbone_.layer_pooling(layers, estimator.pooling) if layers else None
    return InferenceModule(body, layers, output)


def _example(backbone, estimator, input_shape):
    """``(keys, tensors)``: a batch of two samples preprocessed as the estimator does."""
    prep = backbone.preprocess
    if isinstance(prep, ImagePreprocess):
        raw = torch.zeros(2, prep.channels, prep.crop_size, prep.crop_size, dtype=torch.uint8)
    elif backbone.modality == "text":
        raw = EXAMPLE_TEXTS
    elif backbone.modality == "tensor":
        raw = _example_rows(estimator, input_shape)
    elif backbone.modality == "audio":
        # Two clips of one second: the graph serves one length per call.
        rate = prep.sampling_rate
        raw = list(np.random.default_rng(0).normal(0, 0.1, (2, rate)).astype(np.float32))
    elif backbone.modality == "image":
        raise ExportError(f"the image preprocessing of {backbone.spec} "
                          f"({type(prep).__name__}) has no ONNX graph in this version: "
                          f"torchvision and timm image backbones are exported")
    else:
        raise ExportError(f"export_onnx does not serve {backbone.modality} backbones "
                          f"({backbone.spec}, {type(prep).__name__}) in this version")
    inputs = prep(raw)
    if isinstance(inputs, torch.Tensor):
        return (None,), (inputs,)
    return tuple(inputs), tuple(inputs.values())


def _max_samples(estimator):
    """Audio: the samples the estimator keeps of each clip (None: all, or not audio)."""
    backbone = estimator.backbone_
    if backbone.modality != "audio":
        return None
    prep = backbone.preprocess
    rate = getattr(estimator, "sampling_rate", None)
    if rate is not None and int(rate) != prep.sampling_rate:
        raise ExportError(f"the graph takes waveforms at the model's {prep.sampling_rate} Hz "
                          f"(resampling stays outside it); this estimator reads clips at "
                          f"sampling_rate={rate}: resample the clips and fit with "
                          f"sampling_rate={prep.sampling_rate}")
    rule = audio_rule(prep, backbone.spec, rate=rate,
                      max_duration=getattr(estimator, "max_duration", "auto"))
    seconds = rule["max_duration"]
    return None if seconds is None else max(1, int(seconds * rule["target_rate"]))


def _example_rows(estimator, input_shape):
    shape = list(input_shape) if input_shape is not None else [None, estimator.n_features_in_]
    if len(shape) == 2 and not isinstance(shape[1], int):
        shape[1] = estimator.n_features_in_
    if not all(isinstance(s, int) for s in shape[1:]):
        raise ExportError(f"a module's input is traced at a fixed shape per sample; the "
                          f"input was declared with shape {shape}: give its sizes")
    return np.zeros([2] + shape[1:], np.float32)


def _int8(model):
    """ONNX Runtime's dynamic int8 quantization of ``model`` (as ``runtime="onnx"`` does)."""
    with tempfile.TemporaryDirectory(prefix="sktransfer-export-") as folder:
        path = os.path.join(folder, "network.onnx")
        onnx.save_model(model, path)
        return onnx.load_model(quantized(path))

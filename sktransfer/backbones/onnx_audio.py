"""A speech backbone's feature extraction as an ONNX graph: waveforms in, model inputs out.

The served input is float32 waveforms ``(N, T)`` at the model's sampling
rate (resampling stays outside the graph). Clips in one call share a
length, as rows of an array do: the graph pads nothing, so every clip's
attention mask and frame mask are whole (clips of other lengths are served
one call each). Inside: the first ``max_samples`` samples are kept (the
estimator's ``max_duration``), and the waveform models' extractor
(wav2vec2, HuBERT, WavLM, data2vec-audio: ``Wav2Vec2FeatureExtractor``)
normalizes each clip to zero mean and unit variance when it is configured
to. Log-mel (Whisper) and filter-bank (AST) extractors are refused by name.
"""

import numpy as np
from onnx import TensorProto, helper

from .onnx_graph import GraphBuilder, ServingInput, UnsupportedPreprocessing

#: The variance floor of transformers' zero-mean unit-variance normalization.
EPSILON = 1e-7
#: What an audio graph takes, in words (the graph's metadata records it).
AUDIO_LAYOUT = "float32 (N, T) at the model's sampling rate, clips of one length per call"


def audio_graph(prep, example, max_samples=None):
    """The graph of ``prep`` (``AudioFeatures`` of a waveform model, or a module's
    ``Waveforms``): float32 ``(N, T)`` -> the network's inputs named as in ``example``."""
    keys = list(example) if isinstance(example, dict) else [None]
    normalize, convs = False, []
    if type(prep).__name__ == "AudioFeatures":
        extractor = prep.extractor
        if prep.shape != "waveform" or type(extractor).__name__ != "Wav2Vec2FeatureExtractor":
            raise UnsupportedPreprocessing(
                f"the audio feature extractor {type(extractor).__name__} ({prep.shape}) of "
                f"{prep.name_or_path!r} has no ONNX graph here: waveform models "
                f"(Wav2Vec2FeatureExtractor) are exported")
        normalize = bool(getattr(extractor, "do_normalize", False))
        convs = prep.frame_convs
    g = GraphBuilder()
    x = "X"
    if max_samples is not None:
        x = g.node("Slice", [x, g.const([0]), g.const([int(max_samples)]), g.const([1])])
    if normalize:
        # numpy's float32 means (pairwise sums) are within a rounding of the
        # exact mean; a float32 ReduceMean sums in order, far enough off on a
        # near-constant clip that the tiny variance's division blows the error
        # up to whole units. Means in double: numpy's result, to a rounding.
        mean = _mean_in_double(g, x)
        centered = g.node("Sub", [x, mean])
        var = _mean_in_double(g, g.node("Mul", [centered, centered]))
        x = g.node("Div", [centered, g.node("Sqrt", [
            g.node("Add", [var, g.const(np.float32(EPSILON))])])])
    shape = g.node("Shape", [x])
    named = {None: x, "input_values": x,
             "attention_mask": _ones(g, shape),
             "frame_mask": _ones(g, g.node("Concat", [
                 g.node("Slice", [shape, g.const([0]), g.const([1])]),
                 _frames(g, g.node("Slice", [shape, g.const([1]), g.const([2])]), convs)],
                 axis=0))}
    unknown = [k for k in keys if k not in named]
    if unknown:
        raise UnsupportedPreprocessing(f"the network takes {unknown}, which the audio graph "
                                       f"does not give")
    outputs = ["input" if k is None else k for k in keys]
    for key, out in zip(keys, outputs):
        g.node("Identity", [named[key]], output=out)
    types = {o: TensorProto.FLOAT if k in (None, "input_values") else TensorProto.INT64
             for k, o in zip(keys, outputs)}
    model = g.model(helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", "T"]),
                    outputs, types)
    return model, ServingInput(np.float32, (None, None), AUDIO_LAYOUT)


def _mean_in_double(g, x):
    """The mean of each row of float32 ``x``, summed in double, as float32 ``(N, 1)``."""
    total = g.node("ReduceMean", [g.node("Cast", [x], to=TensorProto.DOUBLE), g.const([1])],
                   keepdims=1)
    return g.node("Cast", [total], to=TensorProto.FLOAT)


def _ones(g, shape):
    return g.node("ConstantOfShape", [shape], value=helper.make_tensor(
        "one", TensorProto.INT64, [1], [1]))


def _frames(g, length, convs):
    """The frames the model's convolutions leave of ``length`` samples (as ``conv_lengths``)."""
    for kernel, stride, padding in convs:
        # Floor division of a possibly negative numerator: floor((a) / s) on floats.
        numerator = g.node("Cast", [g.node("Add", [length, g.const([2 * padding - kernel])])],
                           to=TensorProto.DOUBLE)
        quotient = g.node("Floor", [g.node("Div", [numerator, g.const(np.array([stride],
                                                                              np.float64))])])
        length = g.node("Add", [g.node("Cast", [quotient], to=TensorProto.INT64),
                                g.const([1])])
    return length

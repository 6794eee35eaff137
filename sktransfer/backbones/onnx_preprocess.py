"""A backbone's preprocessing as an ONNX graph: raw samples in, the network's input out.

What :func:`sktransfer.export_onnx` puts in front of the exported network so
that a served graph takes what the estimator takes (uint8 images, strings,
float rows) and needs no Python around it. Each family's graph is built from
the same constants its torch preprocessing uses (the weights' resize, crop
and normalization; the model's own tokenizer files), and is checked against
it by the export. A preprocessing that no graph here expresses is refused by
name (:class:`UnsupportedPreprocessing`), never approximated.

Every graph has one input, ``"X"``, and one output per network input key:
``"input"`` for a lone tensor, the tokenizer's names for text.
"""

import numpy as np
from onnx import TensorProto, helper

from .onnx_audio import audio_graph
from .onnx_graph import GraphBuilder, ServingInput, UnsupportedPreprocessing
from .onnx_resize import INTERP_SIZE, resize_axis
from .preprocess import ImagePreprocess, TensorPreprocess

#: The interpolations the graph computes as torch does (plain "nearest" is left
#: out: torch picks floor(i * in / out) in float arithmetic).
INTERPOLATIONS = tuple(INTERP_SIZE)


def preprocess_graph(backbone, example, max_samples=None):
    """The ONNX graph of ``backbone``'s preprocessing and the input it serves.

    Parameters
    ----------
    backbone : Backbone
    example : dict of {str: torch.Tensor} or torch.Tensor
        The network's input for a sample batch (what the torch preprocessing
        gave): its keys name the graph's outputs, its shapes fix what the
        network fixes (a tensor's columns).
    max_samples : int, optional
        Audio: the samples kept of each clip (the estimator's ``max_duration``).

    Returns
    -------
    model : onnx.ModelProto
    serving : ServingInput

    Raises
    ------
    UnsupportedPreprocessing
        Naming the preprocessing when no graph expresses it.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from sktransfer.backbones import load_backbone
    >>> model, serving = preprocess_graph(load_backbone(nn.Linear(3, 2)), torch.zeros(2, 3))
    >>> serving
    ServingInput(dtype=<class 'numpy.float32'>, shape=(None, 3), layout='float32 (N, 3)')
    """
    prep = backbone.preprocess
    if isinstance(prep, ImagePreprocess):
        return image_graph(prep)
    if isinstance(prep, TensorPreprocess):
        shape = (None, *example.shape[1:])
        layout = f"float32 (N, {', '.join(str(s) for s in shape[1:])})"
        return _tensor_graph(len(shape)), ServingInput(np.float32, shape, layout)
    if backbone.modality == "audio":
        return audio_graph(prep, example, max_samples)
    if backbone.modality == "text":
        from .onnx_text import text_graph  # onnxruntime-extensions, only for text
        return text_graph(prep, example)
    raise UnsupportedPreprocessing(
        f"the preprocessing of {backbone.spec} ({type(prep).__name__}, {backbone.modality}) "
        f"has no ONNX graph in this version: export_onnx serves torchvision and timm image "
        f"backbones, WordPiece and byte-level BPE text backbones, waveform speech models "
        f"and a module's tensors")


def image_graph(prep):
    """:class:`~sktransfer.backbones.preprocess.ImagePreprocess` as a graph:
    uint8 ``(N, H, W, C)`` -> float32 ``(N, C, crop, crop)``.

    The same steps as the torch preprocessing, on any H and W: resize the
    shorter side to ``resize_size`` (the longer side as torchvision computes
    it, truncated) with torch's antialiased uint8 arithmetic
    (:mod:`.onnx_resize`), center-crop (offsets rounded half to even, like
    Python's ``round``), scale to [0, 1] and normalize.

    Examples
    --------
    >>> import numpy as np, onnxruntime as ort
    >>> prep = ImagePreprocess(8, 6, mean=(0.5,) * 3, std=(0.5,) * 3)
    >>> model, _ = image_graph(prep)
    >>> session = ort.InferenceSession(model.SerializeToString())
    >>> session.run(None, {"X": np.zeros((2, 10, 12, 3), np.uint8)})[0].shape
    (2, 3, 6, 6)
    """
    if prep.interpolation not in INTERPOLATIONS:
        raise UnsupportedPreprocessing(
            f"image interpolation {prep.interpolation!r} has no graph here that gives "
            f"torch's pixels (bilinear and bicubic do)")
    if prep.crop_size > prep.resize_size:
        raise UnsupportedPreprocessing(
            f"a center crop ({prep.crop_size}) larger than the resized image "
            f"({prep.resize_size}) pads in torchvision; the graph does not pad")
    g = GraphBuilder()
    # Grayscale (C == 1) is repeated to RGB, as the torch preprocessing does, by
    # the normalization's broadcasting at the end: the passes resize one channel.
    x = g.node("Transpose", ["X"], perm=[0, 3, 1, 2])
    shape = g.node("Shape", [x])
    hw = g.node("Slice", [shape, g.const([2]), g.const([4])])
    short = g.node("ReduceMin", [hw], keepdims=1)
    # int(resize * side / short) on positive integers: the exact floor, no float rounding.
    new_hw = g.node("Div", [g.node("Mul", [hw, g.const([prep.resize_size])]), short])
    # torch's own uint8 arithmetic, width then height (see .onnx_resize).
    side = {axis: g.node("Slice", [shape, g.const([axis]), g.const([axis + 1])])
            for axis in (2, 3)}
    new_side = {axis: g.node("Slice", [new_hw, g.const([axis - 2]), g.const([axis - 1])])
                for axis in (2, 3)}
    crop = prep.crop_size
    spare = g.node("Cast", [g.node("Sub", [new_hw, g.const([crop])])], to=TensorProto.FLOAT)
    # Round is half to even, as Python's round() in torchvision's center_crop.
    start = g.node("Cast", [g.node("Round", [g.node("Div", [spare, g.const(
        np.array([2, 2], np.float32))])])], to=TensorProto.INT64)
    first = {axis: g.node("Slice", [start, g.const([axis - 2]), g.const([axis - 1])])
             for axis in (2, 3)}
    # (x / 255 - mean) / std as one multiply and one subtraction: within a float32
    # rounding of torch's three steps. (1, 3, 1, 1) constants broadcast a
    # grayscale (N, 1, ...) to RGB.
    mean = np.array(prep.mean, np.float64).reshape(1, -1, 1, 1)
    std = np.array(prep.std, np.float64).reshape(1, -1, 1, 1)
    shape = (1, 3, 1, 1) if prep.channels == 3 else mean.shape
    scale = g.const(np.broadcast_to(1 / (255 * std), shape).astype(np.float32))
    shift = g.const(np.broadcast_to(mean / std, shape).astype(np.float32))

    def normalized(g, block):  # each block of the last pass, while it is in the cache
        return g.node("Sub", [g.node("Mul", [g.node("Cast", [block], to=TensorProto.FLOAT),
                                             scale]), shift])

    # The center crop is part of each pass: only the pixels it keeps are computed.
    x = resize_axis(g, x, -1, side[3], new_side[3], prep.interpolation, first=first[3],
                    count=crop)
    x = resize_axis(g, x, -2, side[2], new_side[2], prep.interpolation, first=first[2],
                    count=crop, finish=normalized)
    g.rename(x, "input")
    model = g.model(helper.make_tensor_value_info("X", TensorProto.UINT8,
                                                  ["N", "H", "W", "C"]), ["input"])
    return model, ServingInput(np.uint8, (None, None, None, None), image_layout(prep.channels))


def image_layout(channels):
    """What an image graph takes, in words (the graph's metadata records it).

    Examples
    --------
    >>> image_layout(1)
    'uint8 (N, H, W, 1), one channel, any H and W'
    """
    if channels == 3:
        return "uint8 (N, H, W, C), RGB (C = 3) or grayscale (C = 1), any H and W"
    return f"uint8 (N, H, W, {channels}), one channel, any H and W"


def _tensor_graph(ndim):
    g = GraphBuilder()
    g.node("Cast", ["X"], to=TensorProto.FLOAT, output="input")
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N"] + [None] * (ndim - 1))
    return g.model(x, ["input"])

"""ONNX Runtime engines: the inference network exported once, optionally quantized to int8.

The export goes through torch's own exporter (``torch.onnx.export`` with
``dynamo=True``: the graph ``torch.export`` captures) with a dynamic batch
axis, and a dynamic sequence axis for text, so one graph serves every call.
``quantize="int8"`` applies ONNX Runtime's dynamic quantization
(``onnxruntime.quantization.quantize_dynamic``: int8 weights per output
channel, activations quantized per batch at run time) to that graph.
Nothing here writes a graph by hand, and nothing is kept on disk: the graph
lives in the session, in memory, for as long as the engine does.
"""

import abc
import contextlib
import logging
import os
import tempfile
import threading
import warnings

import numpy as np
import torch
from torch import nn

INSTALL = "pip install \"sktransfer[onnx]\""

#: torch.export traces under process-wide state (dispatch modes, the dynamo
#: config): two exports at once in threads break each other, so they take turns.
_EXPORT_LOCK = threading.Lock()


def check_onnxruntime(device):
    """Raise an ImportError naming the fix when ONNX Runtime cannot serve ``device``."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(f"runtime='onnx' needs the onnxruntime and onnx packages: "
                          f"{INSTALL}") from exc
    if device.type == "cuda" and \
            "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise ImportError(f"runtime='onnx' on {device} needs ONNX Runtime's CUDA build: "
                          f"pip install onnxruntime-gpu (in place of onnxruntime), or use "
                          f"device='cpu' or runtime='torch'.")
    return onnxruntime


class _FlatInputs(nn.Module):
    """The inference module with named tensor arguments instead of one dict (ONNX inputs)."""

    def __init__(self, module, keys):
        super().__init__()
        self.module = module
        self.keys = tuple(keys)

    def forward(self, *tensors):
        if self.keys == (None,):
            return self.module(tensors[0])
        return self.module(dict(zip(self.keys, tensors)))


class ExportedEngine(abc.ABC):
    """Base of the engines that run the network as torch's exporter captured it.

    The export happens at the first call, from that batch (the engine does
    not know the input names and shapes before), under a lock, so threads
    arriving together wait for one export. What the runtime built from it and
    the input keys it was exported for are published together, as one
    attribute, so a thread never sees one without the other. Subclasses say
    how a graph file becomes something that runs (:meth:`_build`) and how a
    batch runs in it (:meth:`_run`).
    """

    runtime = None

    def __init__(self, module, device, name="the network"):
        self.module = module
        self.device = device
        self.name = name
        # (what _build made, input keys), assigned once, whole: one reference to read.
        self._built = None
        self._lock = threading.Lock()

    def __call__(self, inputs):
        keys, tensors = _flat(inputs)
        built = self._built
        if built is None:
            with self._lock:
                if self._built is None:
                    self._built = (self._exported(keys, tensors), keys)
                built = self._built
        runner, built_keys = built
        if keys != built_keys:
            raise ValueError(f"runtime={self.runtime!r}: the graph was exported for inputs "
                             f"{built_keys}, and this batch has {keys}")
        return self._run(runner, dict(zip(_input_names(keys), tensors)))

    def _exported(self, keys, tensors):
        with tempfile.TemporaryDirectory(prefix=f"sktransfer-{self.runtime}-") as folder:
            path = os.path.join(folder, "model.onnx")
            try:
                program = export_program(self.module, keys, tensors)
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise RuntimeError(
                    f"runtime={self.runtime!r}: torch's ONNX exporter could not export "
                    f"{self.name} ({type(exc).__name__}: {first}); use runtime='torch' or "
                    f"runtime='compile'.") from exc
            # A full or read-only temporary folder raises its own OSError here.
            program.save(path)
            # Read into memory before the folder goes: the runtime owns the graph.
            return self._build(path)

    @abc.abstractmethod
    def _build(self, path):
        """What runs the graph file at ``path`` (read whole before the file goes)."""

    @abc.abstractmethod
    def _run(self, runner, given):
        """The ``(B, F)`` output of ``runner`` for the named input tensors ``given``."""


class OnnxEngine(ExportedEngine):
    """An :class:`~sktransfer.engine.module.InferenceModule` exported to an ONNX Runtime session.

    Exported at the first call (see :class:`ExportedEngine`); ``session.run``
    is thread-safe, so threads share the session.

    Parameters
    ----------
    module : InferenceModule
    device : torch.device
        ``cpu`` or ``cuda``: the execution provider.
    quantize : None or "int8"
    name : str
        The network's name, for error messages.
    """

    runtime = "onnx"

    def __init__(self, module, device, quantize=None, name="the network"):
        super().__init__(module, device, name)
        self.quantize = quantize

    def _build(self, path):
        onnxruntime = check_onnxruntime(self.device)
        if self.quantize == "int8":
            path = quantized(path)
        options = onnxruntime.SessionOptions()
        # The same CPU threads as the torch runtime, so runtimes compare alike.
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3
        providers = (["CUDAExecutionProvider", "CPUExecutionProvider"]
                     if self.device.type == "cuda" else ["CPUExecutionProvider"])
        return onnxruntime.InferenceSession(path, options, providers=providers)

    def _run(self, session, given):
        # The exporter drops inputs the graph does not read (token_type_ids
        # of a model that ignores them): feed the ones it kept.
        feed = {i.name: _np(given[i.name]) for i in session.get_inputs()}
        (out,) = session.run(None, feed)
        return torch.from_numpy(out)


def export_program(module, keys, tensors, *, opset=None):
    """``module`` exported by torch's exporter: an ``ONNXProgram`` (``.model_proto``).

    The graph's inputs are named after ``keys`` (``"input"`` for a lone
    tensor), its output ``"output"``; the batch axis is dynamic, and so is
    every other axis the network does not fix (see :func:`_dynamic_shapes`).
    What :class:`OnnxEngine` runs, and what :func:`sktransfer.export_onnx`
    embeds in a whole pipeline's graph.

    Parameters
    ----------
    module : torch.nn.Module
        Taking one tensor (``keys == (None,)``) or a dict of them.
    keys : tuple
        The dict's keys, in order, or ``(None,)``.
    tensors : tuple of torch.Tensor
        An example batch, one tensor per key.
    opset : int, optional
        The ONNX opset version; torch's default when None.
    """
    # Two rows at least: torch.export specializes a dimension of size 1,
    # and the graph must take any batch size.
    example = tuple(t.repeat(2, *([1] * (t.ndim - 1))) if t.shape[0] < 2 else t
                    for t in tensors)
    wrapper = _FlatInputs(module, keys).eval()
    shapes = _dynamic_shapes(keys, example)
    names = _input_names(keys)
    with _EXPORT_LOCK, warnings.catch_warnings(), torch.no_grad(), _quiet_exporter_ir():
        warnings.simplefilter("ignore")
        return torch.onnx.export(
            wrapper, example, input_names=names, output_names=["output"],
            dynamic_shapes=(shapes,), dynamo=True, verbose=False, opset_version=opset)


def quantized(path):
    """The int8 graph of the float one at ``path``, written beside it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    target = path.replace(".onnx", ".int8.onnx")
    # Per-channel weight scales: a per-tensor scale costs transformer
    # embeddings several points of cosine similarity to float32
    # (benchmarks/RESULTS.md, "Inference engine and runtimes").
    root = logging.getLogger()
    # The quantizer advises (on the root logger) a shape pre-processing pass,
    # which cannot infer the exported graphs' symbolic shapes: not advice a
    # user of the estimator can act on.
    root.addFilter(_pre_processing_advice)
    try:
        quantize_dynamic(path, target, weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.removeFilter(_pre_processing_advice)
    return target


@contextlib.contextmanager
def _quiet_exporter_ir():
    """Hide the exporter's IR warning about empty attribute lists (audio models'
    graphs have some): a note to the exporter's authors, not to our users."""
    ir_logger = logging.getLogger("onnx_ir._convenience")
    ir_logger.addFilter(_empty_attribute_note)
    try:
        yield
    finally:
        ir_logger.removeFilter(_empty_attribute_note)


def _empty_attribute_note(record):
    return "Attribute type is ambiguous" not in record.getMessage()


def _pre_processing_advice(record):
    return "pre-processing before quantization" not in record.getMessage()


def _dynamic_shapes(keys, example):
    """Which axes of each input vary between calls: the batch, and every other axis
    that neither the preprocessing nor the network fixes.

    A text batch is ``(batch, tokens)`` in each of its tensors; an audio batch
    holds axes of different lengths that grow together (a waveform's samples,
    its attention mask's, and the fewer frames of its ``frame_mask``; a
    user's waveform module takes ``(batch, samples)`` alone), and axes the
    model fixes (Whisper's 30 s window of mel frames, a linear layer's
    input columns). No one ``Dim`` can name them all, so those axes are
    ``Dim.AUTO``: ``torch.export`` finds which are equal or derived from one
    another, and keeps static the ones the network fixes (a later batch that
    differs there is refused by ONNX Runtime, never run wrong). An image
    batch ``(batch, C, H, W)`` varies in its batch axis alone: its
    preprocessing fixes the rest, and a dynamic size would only add ways for
    the export to fail.
    """
    batch = torch.export.Dim("batch")
    return tuple({0: batch} if t.ndim == 4 else
                 {0: batch, **{axis: torch.export.Dim.AUTO for axis in range(1, t.ndim)}}
                 for t in example)


def _flat(inputs):
    """``(keys, tensors)`` of a batch: a dict's items in order, or ``((None,), (tensor,))``."""
    if isinstance(inputs, torch.Tensor):
        return (None,), (inputs,)
    if isinstance(inputs, dict):
        return tuple(inputs), tuple(inputs.values())
    raise TypeError(f"runtime='onnx' takes a tensor or a dict of tensors per batch; got "
                    f"{type(inputs).__name__}")


def _input_names(keys):
    return ["input" if k is None else k for k in keys]


def _np(t):
    return np.ascontiguousarray(t.detach().cpu().numpy())

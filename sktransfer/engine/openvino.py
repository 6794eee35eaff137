"""OpenVINO engines: the inference network compiled for the CPU by OpenVINO's runtime.

The network is exported once by the same exporter as ``runtime="onnx"``
(:func:`~sktransfer.engine.onnx.export_program`: dynamic batch and sequence
axes), read by OpenVINO's runtime (``Core.read_model``, which reads ONNX
itself: no conversion tool, whose usage telemetry stays out of the picture)
and compiled for the CPU, in memory: nothing is kept on disk. With bf16
asked (``precision="bf16"``) and a CPU that has bf16 matrix units (AMX or
AVX512-BF16, as OpenVINO reports them), OpenVINO runs the network in bf16;
otherwise in float32. With ``quantize="int8"`` it runs the network NNCF
quantized at ``fit`` (see :mod:`.calibration`).
"""

import threading
import warnings

import numpy as np
import torch

from .calibration import Recorder, quantized_graph, read_record, to_record
from .onnx import ExportedEngine

INSTALL = "pip install \"sktransfer[openvino]\""

_CORE = []
_CORE_LOCK = threading.Lock()


def core():
    """The process's ``openvino.Core`` (made once), or an ImportError naming the fix."""
    with _CORE_LOCK:
        if not _CORE:
            try:
                import openvino
            except ImportError as exc:
                raise ImportError(f"runtime='openvino' needs the openvino package: "
                                  f"{INSTALL}") from exc
            _CORE.append(openvino.Core())
        return _CORE[0]


def cpu_has_bf16():
    """Whether this CPU has units that compute in bf16, as OpenVINO detects them.

    Read from the CPU plugin's ``OPTIMIZATION_CAPABILITIES`` (``"BF16"`` on
    CPUs with AMX or AVX512-BF16), never guessed from a model name.
    """
    return "BF16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def check_openvino(device, quantize, precision):
    """Refuse what the OpenVINO engine cannot do; return the autocast-style dtype it uses.

    ``quantize="int8"`` runs the network NNCF calibrated at fit (NNCF itself
    is needed only to calibrate).

    Returns
    -------
    torch.dtype or None
        ``torch.bfloat16`` when it will run in bf16, None for float32.
    """
    if device.type != "cpu":
        raise ValueError(f"runtime='openvino' compiles the network for the CPU; on {device} "
                         "use runtime='torch', 'compile' or 'onnx', or device='cpu'.")
    if precision == "fp16":
        raise ValueError("runtime='openvino' runs float32, or bf16 where the CPU has bf16 "
                         "units; precision='fp16' applies to GPUs. Use precision='bf16', "
                         "'fp32' or 'auto'.")
    core()
    if precision != "bf16":
        return None
    if cpu_has_bf16():
        return torch.bfloat16
    _warn_once("precision='bf16' with runtime='openvino': this CPU has no bf16 units "
               "(AMX or AVX512-BF16), so OpenVINO runs the network in float32.")
    return None


_WARNED = set()


def _warn_once(message):
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, UserWarning, stacklevel=4)


class OpenVinoEngine(ExportedEngine):
    """An :class:`~sktransfer.engine.module.InferenceModule` compiled by OpenVINO for the CPU.

    Exported and compiled at the first call (see
    :class:`~sktransfer.engine.onnx.ExportedEngine`). Threads share the
    compiled model, each running its own infer request (one request is not
    safe to share).

    Parameters
    ----------
    module : InferenceModule
    device : torch.device
        The CPU.
    amp_dtype : torch.dtype or None
        ``torch.bfloat16``: OpenVINO's bf16 inference precision; None: f32.
    name : str
        The network's name, for error messages.
    int8 : None, "record" or dict
        None: the float network. ``"record"``: the float network, keeping
        the inputs of its calls for :meth:`calibrate`. A dict (see
        :func:`~sktransfer.engine.calibration.to_record`): the int8 network
        calibrated at fit, run as stored (nothing is exported).
    """

    runtime = "openvino"

    def __init__(self, module, device, amp_dtype=None, name="the network", int8=None):
        super().__init__(module, device, name)
        self.amp_dtype = amp_dtype
        self.int8 = int8
        self._recorder = Recorder() if int8 == "record" else None
        self._float_graph = None
        self._requests = threading.local()

    @property
    def precision(self):
        """The inference precision OpenVINO compiled the network for (``"f32"``, ``"bf16"``)."""
        built = self._built
        if built is None:
            return None
        return str(built[0][0].get_property("INFERENCE_PRECISION_HINT")).lower()

    def _exported(self, keys, tensors):
        if not isinstance(self.int8, dict):
            return super()._exported(keys, tensors)
        stored = tuple(self.int8["inputs"])
        if keys != stored:
            raise ValueError(f"runtime='openvino': the int8 network was calibrated for inputs "
                             f"{stored}, and this batch has {keys}")
        return self._compiled(read_record(core(), self.int8))

    def _build(self, path):
        graph = core().read_model(path)  # weights included: the file may go
        if self._recorder is not None:
            self._float_graph = graph
        return self._compiled(graph)

    def calibrate(self, settings, identity):
        """Quantize the float network on the inputs recorded so far; serve it from now on.

        Returns
        -------
        dict
            The stored form (:func:`~sktransfer.engine.calibration.to_record`).
        """
        if self._recorder is None or self._float_graph is None:
            raise RuntimeError("calibrate() needs an engine built with int8='record' that "
                               "has run")
        graph = quantized_graph(self._float_graph, self._recorder.samples)
        keys = self._built[1]
        record = to_record(graph, keys, settings, identity)
        self._recorder = self._float_graph = None
        self._built = (self._compiled(graph), keys)
        return record

    def _compiled(self, graph):
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if self.amp_dtype == torch.bfloat16 else "f32",
            # The same CPU threads as the torch runtime, so runtimes compare alike.
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
            "PERFORMANCE_HINT": "LATENCY",
        }
        model = core().compile_model(graph, "CPU", config)
        return model, [port.get_any_name() for port in model.inputs]

    def _run(self, built, given):
        model, names = built
        request = getattr(self._requests, "request", None)
        if request is None or self._requests.model is not model:
            request = model.create_infer_request()
            self._requests.request, self._requests.model = request, model
        # The exporter drops inputs the graph does not read (token_type_ids
        # of a model that ignores them): feed the ones it kept.
        feed = {name: _np(given[name]) for name in names}
        if self._recorder is not None:
            self._recorder.add(feed)
        # Shared: the request reads the arrays in place and returns a view of
        # its own output buffer, which the next call reuses: hence the copy.
        result = request.infer(feed, share_inputs=True, share_outputs=True)
        return torch.from_numpy(np.array(result[model.output(0)], copy=True))


def _np(tensor):
    return tensor.detach().cpu().numpy()

"""The runtimes an engine runs its network in: eager torch, torch.compile, ONNX Runtime, OpenVINO.

Every engine is called with a preprocessed batch already on its
:attr:`~Engine.device` (a tensor, or a dict of tensors for text) and returns
the ``(B, F)`` result as a tensor. Engines are read-only once built, so
threads share one.
"""

import os
import stat
import tempfile
import threading
import warnings

import torch

from .._utils.device import autocast, resolve_precision
from .._utils.validation import InvalidParameterError

#: The values of the estimators' ``runtime`` parameter.
RUNTIMES = ("torch", "compile", "onnx", "openvino")
#: The values of ``quantize`` besides None.
QUANTIZATIONS = ("int8",)


def check_runtime(runtime, quantize, device, precision):
    """Refuse a combination that cannot run here; return the autocast dtype to use.

    Parameters
    ----------
    runtime : {"torch", "compile", "onnx", "openvino"}
    quantize : None or "int8"
    device : torch.device
    precision : {"auto", "fp32", "bf16", "fp16"}

    Returns
    -------
    torch.dtype or None
        The autocast dtype (None for float32). ONNX graphs run in float32;
        OpenVINO in bf16 (``torch.bfloat16``) where ``precision="bf16"`` is
        asked and the CPU has bf16 units, else float32.

    Raises
    ------
    ValueError
        For ``quantize`` without ``runtime="onnx"``, int8 off the CPU, ONNX on
        a device ONNX Runtime does not serve, or a reduced ``precision`` asked
        of ONNX.
    ImportError
        For ``runtime="onnx"`` without onnxruntime (or without its CUDA build
        on a GPU), naming what to install.

    Examples
    --------
    >>> check_runtime("torch", None, torch.device("cpu"), "auto") is None
    True
    >>> check_runtime("compile", "int8", torch.device("cpu"), "auto")
    Traceback (most recent call last):
    ...
    ValueError: quantize='int8' quantizes the exported graph, so it needs runtime='onnx' or 'openvino'; got runtime='compile'. Use one of them, or quantize=None.
    """
    if runtime not in RUNTIMES:
        raise InvalidParameterError(f"runtime must be one of {RUNTIMES}; "
                                    f"runtime={runtime!r} is not one of them")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise InvalidParameterError(f"quantize must be None or one of {QUANTIZATIONS}; "
                                    f"quantize={quantize!r} is not one of them")
    if quantize is not None and runtime not in ("onnx", "openvino"):
        raise ValueError(f"quantize={quantize!r} quantizes the exported graph, so it needs "
                         f"runtime='onnx' or 'openvino'; got runtime={runtime!r}. Use one "
                         f"of them, or quantize=None.")
    if runtime == "openvino":
        from .openvino import check_openvino
        return check_openvino(device, quantize, precision)
    if runtime != "onnx":
        return resolve_precision(precision, device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"runtime='onnx' runs on ONNX Runtime's CPU and CUDA providers, "
                         f"not on {device.type!r}; use device='cpu', or runtime='torch'.")
    if quantize is not None and device.type != "cpu":
        raise ValueError(f"quantize={quantize!r} is ONNX Runtime's dynamic quantization, "
                         f"whose kernels run on the CPU; on {device} use quantize=None "
                         f"(and precision for speed with runtime='torch'), or "
                         f"device='cpu'.")
    if precision in ("bf16", "fp16"):
        raise ValueError(f"runtime='onnx' runs the exported float32 graph, and "
                         f"precision={precision!r} applies to runtime='torch' and "
                         f"'compile'; use precision='auto' or 'fp32' with runtime='onnx'.")
    from .onnx import check_onnxruntime
    check_onnxruntime(device)
    return None


class Engine:
    """A network ready to run: eager torch in inference mode and autocast.

    Parameters
    ----------
    module : InferenceModule
        The engine's private network.
    device : torch.device
        Where its weights are and where inputs must be.
    amp_dtype : torch.dtype, optional
        Autocast dtype; None runs in float32.
    """

    runtime = "torch"

    def __init__(self, module, device, amp_dtype=None):
        self.module = module
        self.device = device
        self.amp_dtype = amp_dtype

    def __call__(self, inputs):
        with torch.inference_mode(), autocast(self.device, self.amp_dtype):
            return self._run(inputs)

    def _run(self, inputs):
        return self.module(inputs)


class CompiledEngine(Engine):
    """The same network through ``torch.compile``, compiled on first use and kept.

    Compilation happens at the first call with each new input shape (for
    text, after a second sequence length the length becomes dynamic, so
    later lengths reuse the code). The compiled code lives with the engine
    and is never pickled.
    """

    runtime = "compile"

    def __init__(self, module, device, amp_dtype=None):
        super().__init__(module, device, amp_dtype)
        private_inductor_cache()
        self._compiled = torch.compile(module)
        self._lock = threading.Lock()
        self._warm = False

    def _run(self, inputs):
        if self._warm:
            return self._compiled(inputs)
        # The first call compiles: one thread does it while the others wait,
        # rather than each tracing the same network.
        with self._lock:
            try:
                result = self._compiled(inputs)
            except Exception as exc:
                if not _is_compile_error(exc):
                    raise
                raise RuntimeError(
                    f"runtime='compile': torch.compile could not compile this network "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                    f"use runtime='torch' (eager), or runtime='onnx'.") from exc
            self._warm = True
            return result


def private_inductor_cache():
    """Make sure ``torch.compile`` writes and loads its code where only this user can write.

    Inductor keeps the code it compiles (Python modules, shared libraries
    it then loads) under ``$TORCHINDUCTOR_CACHE_DIR``, by default
    ``<tmp>/torchinductor_<user>``: a name in a directory every user of the
    host can write, which another user could create first and fill. Before
    compiling, that default is made safe without changing anything a user
    relies on:

    - a directory the user chose (``TORCHINDUCTOR_CACHE_DIR`` set to
      anything but the default) is theirs to choose, and left as it is;
    - a default that does not exist yet is created, owned by this user, mode
      0700, so torch finds it there as it always would;
    - a default that exists, is owned by this user and is no symbolic link is
      kept, and made 0700 if it was more open;
    - otherwise (owned by someone else, a link, not a directory) this
      process compiles into a fresh private directory
      (``tempfile.mkdtemp``), set as ``TORCHINDUCTOR_CACHE_DIR`` for this
      process only, with a warning naming the directory refused.

    Returns
    -------
    str or None
        The directory torch will use; None where ownership cannot be
        checked (no ``os.getuid``: not POSIX).
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    if not hasattr(os, "getuid"):
        return None
    default = os.path.abspath(default_cache_dir())
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is not None and os.path.abspath(chosen) != default:
        return chosen
    with _INDUCTOR_LOCK:
        problem = _unsafe_directory(default)
        if problem is None:
            return default
        private = tempfile.mkdtemp(prefix="sktransfer-inductor-")
        warnings.warn(f"torch.compile's default cache directory {default} {problem}, so "
                      f"another user of this host could plant code in it; compiling into "
                      f"{private} instead (TORCHINDUCTOR_CACHE_DIR, for this process).",
                      UserWarning, stacklevel=3)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = private
        return private


_INDUCTOR_LOCK = threading.Lock()


def _unsafe_directory(path):
    """None once ``path`` is a directory of this user's, mode 0700; else what is wrong with it."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        return f"cannot be created ({exc.strerror})"
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory"
    if info.st_uid != os.getuid():
        return f"belongs to another user (uid {info.st_uid})"
    if stat.S_IMODE(info.st_mode) != 0o700:
        # Ours: close it to others (a sticky temporary directory keeps others
        # from replacing it meanwhile).
        os.chmod(path, 0o700)
    return None


def _is_compile_error(exc):
    dynamo_exc = getattr(getattr(torch, "_dynamo", None), "exc", None)
    base = getattr(dynamo_exc, "TorchDynamoException", None)
    return base is not None and isinstance(exc, base)


def build_engine(module, device, runtime, quantize=None, amp_dtype=None, name="the network",
                 int8=None):
    """The engine of ``runtime`` for ``module`` (an :class:`InferenceModule`).

    ``int8`` is the OpenVINO engine's (see
    :class:`~sktransfer.engine.openvino.OpenVinoEngine`).

    Examples
    --------
    >>> from torch import nn
    >>> from sktransfer.engine.module import InferenceModule
    >>> engine = build_engine(InferenceModule(nn.Linear(3, 2).eval()), torch.device("cpu"), "torch")
    >>> engine(torch.zeros(4, 3)).shape
    torch.Size([4, 2])
    """
    if runtime == "compile":
        return CompiledEngine(module, device, amp_dtype)
    if runtime == "onnx":
        from .onnx import OnnxEngine
        return OnnxEngine(module, device, quantize=quantize, name=name)
    if runtime == "openvino":
        from .openvino import OpenVinoEngine
        return OpenVinoEngine(module, device, amp_dtype, name=name, int8=int8)
    return Engine(module, device, amp_dtype)

"""Device and precision resolution.

The estimators take ``device`` and ``precision`` as plain strings so that they
can be searched and pickled; this module turns them into ``torch.device`` and
autocast settings at the moment a computation starts.
"""

import contextlib

import torch

from .launch import launch_device

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device="auto"):
    """Return the ``torch.device`` that ``device`` names.

    Parameters
    ----------
    device : str or torch.device, default="auto"
        ``"auto"`` picks CUDA, then Apple MPS, then the CPU. Any string that
        ``torch.device`` accepts (``"cpu"``, ``"cuda"``, ``"cuda:1"``) is used
        as given, except that in a process launched by torchrun (or
        accelerate, or srun) CUDA without an index means this process's GPU,
        ``LOCAL_RANK``.

    Returns
    -------
    torch.device

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, torch.device):
        return launch_device(device)
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return launch_device(torch.device("cuda"))
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a device torch knows; use 'auto', 'cpu', "
            "'cuda', 'cuda:<index>' or 'mps'."
        ) from exc
    resolved = launch_device(resolved)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was asked for but CUDA is not available on this "
            "machine; use device='auto' or device='cpu'."
        )
    return resolved


def resolve_precision(precision, device):
    """Return the autocast dtype for ``precision`` on ``device`` (None = fp32).

    ``"auto"`` means bf16 on CUDA devices that support it (fp16 on older
    ones) and fp32 everywhere else, where reduced precision is slower or
    less accurate.

    Examples
    --------
    >>> import torch
    >>> resolve_precision("auto", torch.device("cpu")) is None
    True
    >>> resolve_precision("bf16", torch.device("cpu"))
    torch.bfloat16
    """
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision={precision!r} is not supported; use one of {PRECISIONS}."
        )
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def autocast(device, dtype):
    """An autocast context for ``dtype`` on ``device``, or a no-op for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch, device):
    """Move a model input (a tensor or a dict of tensors) to ``device``.

    Pinned CPU tensors are copied asynchronously (``non_blocking``).
    """
    non_blocking = device.type == "cuda"
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    raise TypeError(f"cannot move a {type(batch).__name__} to a device")


def check_device(device):
    """The ``torch.device`` for ``device``, refusing one this machine does not have."""
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a string such as 'auto', 'cpu' or 'cuda'; got a "
                        f"{type(device).__name__}: {device!r}")
    resolved = resolve_device(device)  # unknown names, CUDA without CUDA
    if resolved.type == "cuda" and resolved.index is not None \
            and resolved.index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r}: this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s)")
    mps = getattr(torch.backends, "mps", None)
    if resolved.type == "mps" and not (mps is not None and mps.is_available()):
        raise ValueError(f"device={device!r} was asked for but MPS is not available on "
                         "this machine; use device='auto' or device='cpu'.")
    return resolved

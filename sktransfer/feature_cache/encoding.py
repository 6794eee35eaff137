"""A stable encoding of the values a network's plain attributes hold, for the cache key.

Two networks that differ only in a plain attribute (``self.scale = 100``, a
config object's field, a function chosen as activation) compute different
embeddings, so the attribute's value must enter the key. :func:`encode`
turns a value into text that is the same in every process and every run
for equal values: no ``id``, no memory address, no hash randomization.

Values are encoded by what they are: scalars and strings by their ``repr``;
containers item by item (dicts and sets in a sorted order); tensors and
arrays by dtype, shape and a hash of their bytes; classes and functions by
their qualified name and, for Python functions, their code, defaults and
the values they close over; other objects by their class and fields. A
value with no such form (a C object whose only ``repr`` is its address) is
refused with :class:`UnkeyableValueError`, naming the attribute, rather
than keyed by its type alone and so served another value's embeddings.
"""

import collections
import datetime
import decimal
import enum
import functools
import hashlib
import logging
import re
import threading
import types

import numpy as np
import torch

# Objects that carry no part of a computation: their type is their value.
_NO_VALUE = (type(threading.Lock()), type(threading.RLock()), threading.Condition,
             threading.Event, threading.Semaphore, threading.local, logging.Logger,
             logging.Handler)
_SCALARS = (type(None), bool, int, float, complex, str, bytes)
# Values whose repr is their whole value, in every process.
_BY_REPR = (range, slice, type(Ellipsis), type(NotImplemented), bytearray, datetime.date,
            datetime.time, datetime.timedelta, datetime.timezone, decimal.Decimal)
_TORCH_NAMED = (torch.dtype, torch.device, torch.layout, torch.memory_format)
_EMPTY_CELL = "<empty cell>"
# Deeper than this, a value is refused rather than walked (a linked chain).
_MAX_DEPTH = 64


class UnkeyableValueError(ValueError):
    """A network holds an attribute whose value has no stable encoding, so it cannot be cached.

    The message names the attribute and its type.
    """


def encode(value, path, seen=None):
    """The stable text of ``value``, found at attribute ``path`` of a network.

    Parameters
    ----------
    value : object
    path : str
        Where ``value`` is (``"encoder.layer.0.scale"``), for error messages.
    seen : dict, optional
        ``id -> (path, object)`` of objects already encoded in this key (the
        modules of the network by their names, among them): a second
        reference to one is encoded as that path, so cycles and shared
        objects are encoded once. It holds the objects, so that no id is
        reused while it lives.

    Returns
    -------
    str

    Raises
    ------
    UnkeyableValueError
        For a value (or a part of it) that has no stable encoding.

    Examples
    --------
    >>> encode({"b": 2, "a": (1.5, None)}, "config")
    "builtins.dict{str:'a'=builtins.tuple(float:1.5,NoneType:None),str:'b'=int:2}"
    >>> encode(torch.float16, "dtype")
    'torch.dtype:torch.float16'
    """
    return _Encoder(seen).encode(value, path, 0)


class _Encoder:
    def __init__(self, seen):
        self.seen = {} if seen is None else seen

    def encode(self, value, path, depth):
        if depth > _MAX_DEPTH:
            raise UnkeyableValueError(f"attribute {path!r} nests deeper than {_MAX_DEPTH} "
                                      f"levels; it cannot be part of a cache key")
        if type(value) in _SCALARS:
            return f"{type(value).__name__}:{value!r}"
        if isinstance(value, _SCALARS) and not isinstance(value, enum.Enum):
            # A subclass (a str with extra fields): its base value, then its fields.
            base = next(t for t in _SCALARS if isinstance(value, t))
            fields = self.encode(dict(getattr(value, "__dict__", {})), path, depth + 1)
            return f"{_name(type(value))}:{base.__repr__(value)}:{fields}"
        if isinstance(value, _TORCH_NAMED):
            return f"{_name(type(value))}:{value}"
        if type(value) in _BY_REPR:
            return f"{_name(type(value))}:{value!r}"
        if isinstance(value, re.Pattern):
            return f"re.Pattern:{self.encode(value.pattern, path, depth + 1)}:{value.flags}"
        if isinstance(value, enum.Enum):
            return f"enum:{_name(type(value))}.{value.name}"
        if isinstance(value, (type, types.BuiltinFunctionType, types.MethodDescriptorType,
                              types.WrapperDescriptorType, types.MethodWrapperType)):
            return f"named:{_name(value)}"
        known = self.seen.get(id(value))
        if known is not None:
            return f"ref:{known[0]}"
        self.seen[id(value)] = (path, value)
        return self._compound(value, path, depth + 1)

    def _compound(self, value, path, depth):
        if isinstance(value, torch.Tensor):
            return _tensor_text(value)
        if isinstance(value, np.ndarray) and value.dtype != object:
            return _array_text(value)
        if isinstance(value, np.generic):
            return f"np.{value.dtype.str}:{value!r}"
        if isinstance(value, (tuple, list, collections.deque)) or isinstance(value, np.ndarray):
            items = ",".join(self.encode(v, f"{path}[{i}]", depth) for i, v in enumerate(value))
            return f"{_name(type(value))}({items})"
        if isinstance(value, dict):
            items = sorted(
                f"{self.encode(k, path, depth)}={self.encode(v, f'{path}[{k!r}]', depth)}"
                for k, v in value.items())
            return f"{_name(type(value))}{{{','.join(items)}}}"
        if isinstance(value, (set, frozenset)):
            items = sorted(self.encode(v, path, depth) for v in value)
            return f"{_name(type(value))}{{{','.join(items)}}}"
        if isinstance(value, functools.partial):
            return (f"partial({self.encode(value.func, path, depth)},"
                    f"{self.encode(value.args, path, depth)},"
                    f"{self.encode(value.keywords, path, depth)})")
        if isinstance(value, types.MethodType):
            return (f"method({self.encode(value.__func__, path, depth)},"
                    f"{self.encode(value.__self__, path, depth)})")
        if isinstance(value, types.FunctionType):
            return self._function(value, path, depth)
        if isinstance(value, types.CodeType):
            return self._code(value, path, depth)
        if isinstance(value, _NO_VALUE):
            return f"novalue:{_name(type(value))}"
        return self._object(value, path, depth)

    def _function(self, fn, path, depth):
        # The code and what it closes over: two lambdas of one qualified name
        # computing different things differ here.
        cells = tuple(_cell_contents(c) for c in fn.__closure__ or ())
        return (f"function:{_name(fn)}({self._code(fn.__code__, path, depth)},"
                f"{self.encode(fn.__defaults__, path, depth)},"
                f"{self.encode(fn.__kwdefaults__, path, depth)},"
                f"{self.encode(cells, path, depth)})")

    def _code(self, code, path, depth):
        return (f"code:{_digest([code.co_code])}:"
                f"{self.encode(tuple(code.co_consts), path, depth)}:"
                f"{self.encode(tuple(code.co_names), path, depth)}")

    def _object(self, value, path, depth):
        fields = getattr(value, "__dict__", None)
        slots = [s for cls in type(value).__mro__ for s in getattr(cls, "__slots__", ())
                 if isinstance(s, str) and s not in ("__dict__", "__weakref__")]
        if fields is None and not slots:
            raise UnkeyableValueError(
                f"attribute {path!r} holds a {_name(type(value))}, whose value has no "
                f"stable encoding: it cannot be part of a feature cache key. Use "
                f"cache=None, or keep that object out of the network's attributes.")
        state = dict(fields or {})
        state.update({s: getattr(value, s) for s in slots if hasattr(value, s)})
        return f"object:{_name(type(value))}{self.encode(state, path, depth)}"


def _cell_contents(cell):
    try:
        return cell.cell_contents
    except ValueError:  # a cell not filled yet (a name the function assigns later)
        return _EMPTY_CELL


def _name(obj):
    module = getattr(obj, "__module__", None) or ""
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", "?")
    return f"{module}.{qualname}"


def _digest(parts):
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part)
    return h.hexdigest()


def tensor_bytes(tensor):
    """The bytes of a tensor's values, in row-major order, as a buffer."""
    tensor = tensor.detach()
    if tensor.is_sparse or tensor.is_quantized:
        tensor = tensor.to_dense() if tensor.is_sparse else tensor.dequantize()
    flat = tensor.cpu().contiguous().reshape(-1)
    if flat.numel() == 0:
        return b""
    return memoryview(np.ascontiguousarray(flat.view(torch.uint8).numpy()))


def _tensor_text(tensor):
    if isinstance(tensor, torch.nn.parameter.UninitializedTensorMixin):
        return "tensor:uninitialized"
    return f"tensor:{tensor.dtype}:{tuple(tensor.shape)}:{_digest([tensor_bytes(tensor)])}"


def _array_text(array):
    data = np.ascontiguousarray(array)
    return f"ndarray:{data.dtype.str}:{data.shape}:{_digest([data.view(np.uint8).reshape(-1)])}"

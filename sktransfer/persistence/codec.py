"""The one codec between sktransfer's values and what pickles and files hold.

Tensors become numpy arrays (:func:`tensor_to_array`, with the dtypes numpy
lacks, bfloat16, carried as same-width integers) and values become tagged
JSON: a value JSON would not give back as it was (a tuple, a dict keyed by
integers, a numpy scalar) is wrapped in a one-key dict naming what it was.
One tag vocabulary serves three forms:

============================  ==============================================  =============
tag                           stands for                                      forms
============================  ==============================================  =============
``{"__tuple__": [...]}``      a tuple                                         all three
``{"__items__": [[k, v]]}``   a dict keyed by other than (plain) strings      values, plain
``{"__dict__": {...}}``       a dict keyed by strings                         attrs, plain
``{"__scalar__": [dt, x]}``   a numpy scalar                                  values
``{"__ndarray__": [...]}``    a numpy array of numbers or strings, inline     values
``{"__tensor__": ...}``       a tensor (and its ``"dtype"``)                  attrs, plain
``{"__array__": key}``        a numpy array stored beside the JSON            attrs
``{"__dtype__": name}``       a ``torch.dtype``                               attrs
``{"__device__": name}``      a ``torch.device``                              attrs
``{"__class__": name}``       a class, by ``"<module>.<qualname>"``           attrs
``{"__object__": value}``     anything else, kept as is (pickles only)        attrs
============================  ==============================================  =============

- **values** (:func:`to_json` / :func:`from_json`): estimator parameters
  and fitted attributes in model files. Strict: anything that is not plain
  data is refused, and decoding knows only its own tags, so an altered file
  cannot make it build anything but plain data.
- **attrs** (:func:`encode_attribute` / :func:`decode_attribute`): a
  module's own attributes in a module tree
  (:mod:`sktransfer.persistence.modules`). Tensors go beside the JSON under
  a key (into safetensors in a file, as arrays in a pickle); values JSON
  cannot hold are kept for pickling and named by :func:`non_json_values`,
  so that a file refuses them.
- **plain** (:func:`to_plain` / :func:`from_plain`): an optimizer's state
  in a pickle. Not JSON: it only goes to pickle, so arrays stay inline.

Why three forms rather than one: each is already written in pickles and
files users hold, and they differ on purpose (files refuse objects that
pickles keep; module tensors must go to safetensors by name). One module
keeps their tags from drifting apart.
"""

import numpy as np
import torch
from torch import nn

from .trust import UntrustedContentError, class_name

# Tensor dtypes numpy cannot hold: carried as same-width integers.
VIEW_AS = {torch.bfloat16: torch.int16}

# Every torch.dtype by its name, read from torch's own namespace (never
# getattr(torch, name): a file's string must not reach torch.load, nor run
# torch's lazy module __getattr__).
_DTYPES = {str(v).removeprefix("torch."): v for v in vars(torch).values()
           if isinstance(v, torch.dtype)}


# -- tensors <-> numpy arrays --------------------------------------------------

def dtype_name(dtype):
    """``"float32"`` for ``torch.float32``.

    Examples
    --------
    >>> import torch
    >>> dtype_name(torch.bfloat16)
    'bfloat16'
    """
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name):
    """The ``torch.dtype`` named ``name`` (as :func:`dtype_name` writes it).

    Raises
    ------
    UntrustedContentError
        When ``name`` names anything but a dtype (``"load"`` would otherwise
        reach ``torch.load``).

    Examples
    --------
    >>> dtype_from_name("bfloat16")
    torch.bfloat16
    >>> dtype_from_name("load")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sktransfer.persistence.trust.UntrustedContentError: refusing 'load' ...
    """
    dtype = _DTYPES.get(name) if isinstance(name, str) else None
    if dtype is None:
        raise UntrustedContentError(str(name), "a dtype tag must name a torch.dtype")
    return dtype


def tensor_to_array(tensor):
    """A detached CPU numpy array of ``tensor`` (dtypes numpy lacks as integers).

    Examples
    --------
    >>> import torch
    >>> tensor_to_array(torch.ones(2, dtype=torch.bfloat16)).dtype
    dtype('int16')
    """
    tensor = tensor.detach().cpu()
    if tensor.dtype in VIEW_AS:
        tensor = tensor.view(VIEW_AS[tensor.dtype])
    return tensor.numpy()


def array_to_tensor(array, dtype=None):
    """The tensor :func:`tensor_to_array` was made from (``dtype``: its name).

    Examples
    --------
    >>> import torch
    >>> t = torch.tensor([1.5, -2.0], dtype=torch.bfloat16)
    >>> array_to_tensor(tensor_to_array(t), "bfloat16").equal(t)
    True
    """
    array = np.asarray(array)
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, copy=True, order="C")  # torch needs its own memory
    tensor = torch.from_numpy(array)
    if dtype is not None:
        wanted = dtype_from_name(dtype)
        tensor = tensor.view(wanted) if wanted in VIEW_AS else tensor.to(wanted)
    return tensor


# -- values: parameters and fitted attributes in model files ----------------------

def to_json(value):
    """``value`` as JSON data that :func:`from_json` turns back into it exactly.

    Tuples, numpy scalars and arrays, and dicts with keys other than strings
    (or keys that look like tags) are tagged, so they come back as what they
    were.

    Raises
    ------
    TypeError
        Naming the type of a value that is not plain data.

    Examples
    --------
    >>> import numpy as np
    >>> to_json({"sizes": (1, 2), 3: np.float32(0.5)})
    {'__items__': [['sizes', {'__tuple__': [1, 2]}], [3, {'__scalar__': ['<f4', 0.5]}]]}
    >>> from_json(to_json((1, [2.5, "a"])))
    (1, [2.5, 'a'])
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return {"__scalar__": [value.dtype.str, value.item()]}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, tuple) and type(value) is tuple:
        return {"__tuple__": [to_json(v) for v in value]}
    if isinstance(value, dict):
        items = [[to_json(k), to_json(v)] for k, v in value.items()]
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: v for k, v in items}
        return {"__items__": items}
    if isinstance(value, np.ndarray):
        return _array_to_json(value)
    raise TypeError(f"a {type(value).__module__}.{type(value).__qualname__} is not plain data")


def _array_to_json(array):
    if array.dtype.kind in "biufU":
        return {"__ndarray__": [array.dtype.str, list(array.shape), array.tolist()]}
    if array.dtype == object:
        values = array.ravel().tolist()
        bad = {type(v).__name__ for v in values
               if not isinstance(v, (str, bool, int, float, type(None)))}
        if bad:
            raise TypeError(f"an object array holding {sorted(bad)} is not plain data")
        return {"__ndarray__": ["O", list(array.shape), [to_json(v) for v in values]]}
    raise TypeError(f"an array of dtype {array.dtype} is not plain data")


def from_json(value):
    """Undo :func:`to_json`.

    Raises
    ------
    ValueError
        For an array or scalar of a dtype other than booleans, numbers and
        strings (an altered file asking for objects).
    """
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tuple__" in value:
        return tuple(from_json(v) for v in value["__tuple__"])
    if "__items__" in value:
        return {_hashable(from_json(k)): from_json(v) for k, v in value["__items__"]}
    if "__scalar__" in value:
        dtype, item = value["__scalar__"]
        return np.dtype(_plain_dtype(dtype)).type(item)
    if "__ndarray__" in value:
        dtype, shape, data = value["__ndarray__"]
        if dtype == "O":
            out = np.empty(len(data), dtype=object)
            out[:] = [from_json(v) for v in data]
            return out.reshape(shape)
        return np.array(data, dtype=_plain_dtype(dtype)).reshape(shape)
    return {k: from_json(v) for k, v in value.items()}


def _plain_dtype(name):
    """Refuse any dtype but booleans, numbers and unicode strings (no object, no void)."""
    try:
        dtype = np.dtype(str(name))
    except (TypeError, ValueError):
        dtype = None
    if dtype is None or dtype.kind not in "biufU":
        raise UntrustedContentError(str(name), "a model file holds arrays of booleans, "
                                               "numbers and strings only")
    return dtype


def _hashable(key):
    # JSON has no tuples: a tuple key came back as a list.
    return tuple(key) if isinstance(key, list) else key


# -- attrs: a module's own attributes in a module tree ------------------------------

def encode_attribute(value, key, tensors):
    """A JSON-able form of an attribute; tensors and arrays go to ``tensors[key]``.

    Parameters
    ----------
    value : object
    key : str
        The attribute's full name (``"0.scale"``): where its tensors go.
    tensors : dict
        Filled with ``{key: numpy array}`` for the tensors and arrays found.

    Examples
    --------
    >>> import torch
    >>> tensors = {}
    >>> encode_attribute((2, torch.float16), "net.spec", tensors)
    {'__tuple__': [2, {'__dtype__': 'float16'}]}
    >>> encode_attribute(torch.zeros(2), "net.mask", tensors), sorted(tensors)
    ({'__tensor__': 'net.mask', 'dtype': 'float32'}, ['net.mask'])
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [encode_attribute(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, tuple) and type(value) in (tuple, torch.Size):
        return {"__tuple__": [encode_attribute(v, f"{key}.{i}", tensors)
                              for i, v in enumerate(value)]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: encode_attribute(v, f"{key}.{k}", tensors)
                             for k, v in value.items()}}
    if isinstance(value, torch.dtype):
        return {"__dtype__": dtype_name(value)}
    if isinstance(value, torch.device):
        return {"__device__": str(value)}
    if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
        tensors[key] = tensor_to_array(value)
        return {"__tensor__": key, "dtype": dtype_name(value.dtype)}
    if isinstance(value, np.ndarray) and value.dtype != object:
        tensors[key] = value
        return {"__array__": key}
    if isinstance(value, type):
        return {"__class__": class_name(value)}
    # A function, an enum, a user object: kept as is for pickling; the save
    # format refuses it by name (see non_json_values).
    return {"__object__": value}


def decode_attribute(value, tensors, classes):
    """Undo :func:`encode_attribute`.

    Parameters
    ----------
    value : object
        As :func:`encode_attribute` returned it.
    tensors : dict
        The tensors it stored (numpy arrays or torch tensors).
    classes : dict of {str: type}
        The class objects for ``"__class__"`` tags, already checked for
        trust (see :func:`sktransfer.persistence.trust.resolve_classes`).

    Examples
    --------
    >>> decode_attribute({"__tuple__": [1, {"__device__": "cpu"}]}, {}, {})
    (1, device(type='cpu'))
    """
    if isinstance(value, list):
        return [decode_attribute(v, tensors, classes) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tuple__" in value:
        return tuple(decode_attribute(v, tensors, classes) for v in value["__tuple__"])
    if "__dict__" in value:
        return {k: decode_attribute(v, tensors, classes) for k, v in value["__dict__"].items()}
    if "__dtype__" in value:
        return dtype_from_name(value["__dtype__"])
    if "__device__" in value:
        return torch.device(value["__device__"])
    if "__tensor__" in value:
        return array_to_tensor(tensors[value["__tensor__"]], value["dtype"])
    if "__array__" in value:
        return np.array(tensors[value["__array__"]])
    if "__class__" in value:
        return classes[value["__class__"]]
    if "__object__" in value:
        return value["__object__"]
    raise ValueError(f"not an encoded attribute: {value!r}")


def non_json_values(config, path="config"):
    """Where ``config`` holds values JSON cannot (functions, user objects, bytes).

    Returns
    -------
    list of str
        A readable path per value, such as
        ``"config['children']['0']['attrs']['fn']: function"``.

    Examples
    --------
    >>> from torch import nn
    >>> from sktransfer.persistence.modules import module_state
    >>> non_json_values(module_state(nn.Linear(2, 1))[0])
    []
    >>> non_json_values({"attrs": {"fn": {"__object__": len}}})
    ["config['attrs']['fn']: builtin_function_or_method"]
    """
    if config is None or isinstance(config, (bool, int, float, str)):
        return []
    if isinstance(config, list):
        return [p for i, v in enumerate(config) for p in non_json_values(v, f"{path}[{i}]")]
    if isinstance(config, dict) and all(isinstance(k, str) for k in config):
        if "__object__" in config:
            return [f"{path}: {type(config['__object__']).__name__}"]
        return [p for k, v in config.items() for p in non_json_values(v, f"{path}[{k!r}]")]
    return [f"{path}: {type(config).__name__}"]


def is_json_able(config):
    """True when ``config`` round-trips through JSON unchanged.

    Examples
    --------
    >>> from torch import nn
    >>> from sktransfer.persistence.modules import module_state
    >>> is_json_able(module_state(nn.Sequential(nn.Linear(2, 1), nn.ReLU()))[0])
    True
    """
    return not non_json_values(config)


def check_json_able(config, what="the model"):
    """Raise a TypeError naming every value of ``config`` JSON cannot hold.

    Examples
    --------
    >>> check_json_able({"attrs": {"fn": {"__object__": len}}}, "a head")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: a head holds values that cannot be written as JSON: ["config['attrs']['fn']: ...
    """
    bad = non_json_values(config)
    if bad:
        raise TypeError(
            f"{what} holds values that cannot be written as JSON: {bad}. Make them "
            "plain attributes (numbers, strings, lists, tensors), or use pickle/joblib "
            "for this model."
        )


# -- plain: an optimizer's state in a pickle ------------------------------------------

def to_plain(obj):
    """Nested dicts/lists/tuples with tensors -> the same with tagged numpy arrays.

    Dicts keyed by anything but strings (an optimizer's state, keyed by
    parameter index) become ``{"__items__": [[key, value], ...]}``.

    Examples
    --------
    >>> import torch
    >>> plain = to_plain({"state": {0: {"step": torch.tensor(3.0)}}, "lr": 0.1})
    >>> from_plain(plain)["state"][0]["step"]
    tensor(3.)
    """
    if isinstance(obj, torch.Tensor):
        return {"__tensor__": tensor_to_array(obj), "dtype": dtype_name(obj.dtype)}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: to_plain(v) for k, v in obj.items()}}
        return {"__items__": [[k, to_plain(v)] for k, v in obj.items()]}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return {"__tuple__": [to_plain(v) for v in obj]}
    return obj


def from_plain(obj):
    """Undo :func:`to_plain` (tensors on the CPU)."""
    if isinstance(obj, list):
        return [from_plain(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return array_to_tensor(obj["__tensor__"], obj["dtype"])
    if "__dict__" in obj:
        return {k: from_plain(v) for k, v in obj["__dict__"].items()}
    if "__items__" in obj:
        return {k: from_plain(v) for k, v in obj["__items__"]}
    if "__tuple__" in obj:
        return tuple(from_plain(v) for v in obj["__tuple__"])
    return obj

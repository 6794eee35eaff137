"""The layout of a model file, shared by :mod:`.writer` and :mod:`.reader`.

A model file is a safetensors file:

- its tensors are every weight (backbones, heads, L2-SP references), and,
  when the saved object is a scikit-learn composite (a Pipeline, a
  FeatureUnion, a ColumnTransformer, a search...), one more uint8 tensor
  holding that object graph as written by :mod:`skops.io`, with each
  sktransfer estimator swapped for a small
  :class:`~sktransfer.serialization.EstimatorSlot` that names its entry in
  the manifest;
- its metadata holds the manifest, as JSON: the format version, and per
  sktransfer estimator its class, its parameters, its fitted attributes
  (classes, target scaling, history...) and the configs that rebuild its
  networks (:func:`~sktransfer.backbones.base.backbone_state`,
  :func:`~sktransfer.persistence.modules.module_state`), plus a CRC-32 of
  every tensor.

Why this shape: skops already audits and loads scikit-learn objects without
pickle, but cannot hold a torch network; safetensors holds tensors and
nothing that runs; JSON holds the rest as data. Every class the file names
is checked against what the user trusts before anything is imported. One
safetensors file, rather than a zip of parts, is written in one pass (about
as fast as ``torch.save``; a zip copies the weights a second time), can be
inspected with any safetensors tool, and loads its tensors only after the
checks. The checksums turn a corrupted download into an error instead of
wrong weights.
"""

import zlib

import numpy as np
from torch import nn

from ..features import PretrainedFeatureTransformer
from ..finetune import FineTunedClassifier, FineTunedRegressor
from ..serialization import EstimatorSlot

#: Written into every file; :func:`~sktransfer.load` reads this version and older ones.
FORMAT_VERSION = 1
FORMAT_NAME = "sktransfer-model"

#: Metadata keys of the safetensors file, and the tensor of the skops part.
FORMAT_KEY = "format"
MANIFEST = "sktransfer.manifest"
SKLEARN = "sklearn.skops"

#: The estimator classes a file may name, by their public names. Public
#: names, not module paths, so files survive a move of a class between modules.
ESTIMATORS = {f"sktransfer.{cls.__name__}": cls for cls in
              (PretrainedFeatureTransformer, FineTunedClassifier, FineTunedRegressor)}
#: What the writer swaps out of a scikit-learn graph: the public classes (and
#: so their subclasses), not a private base, so this room needs no private name.
SKTRANSFER_BASES = (PretrainedFeatureTransformer, FineTunedClassifier, FineTunedRegressor)

#: The name skops writes for a slot (an import path: see :mod:`sktransfer.serialization`).
SLOT_TYPE = f"{EstimatorSlot.__module__}.{EstimatorSlot.__qualname__}"

__all__ = ["ESTIMATORS", "FORMAT_KEY", "FORMAT_NAME", "FORMAT_VERSION", "MANIFEST", "SKLEARN",
           "SKTRANSFER_BASES", "SLOT_TYPE", "bytes_to_tensors", "checksum", "find_instances",
           "skops_io", "tensors_to_bytes"]

# What the graph walk never opens: values without parts, classes, and
# networks (they hold no estimators, and a big one has many attributes).
_LEAVES = (str, bytes, int, float, complex, type(None), type, nn.Module)


def skops_io():
    """:mod:`skops.io`, imported when a file with a scikit-learn part is met.

    Imported when needed: skops.io imports much of scikit-learn (its list of
    trusted types), which ``import sktransfer`` should not pay for.
    """
    import skops.io

    return skops.io


def checksum(array):
    """CRC-32 of an array's bytes: catches corruption, not deliberate edits.

    Examples
    --------
    >>> import numpy as np
    >>> checksum(np.zeros(4, dtype=np.uint8))
    558161692
    """
    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))


def find_instances(obj, types):
    """Every instance of ``types`` reachable from ``obj``, in the order first met.

    Walks attributes, containers and object arrays, depth first, each object
    once. An instance found is not opened: the sktransfer estimators hold
    their own networks, described on their own, and a slot holds a number.

    Parameters
    ----------
    obj : object
        A scikit-learn object graph (a Pipeline, a search...).
    types : type or tuple of type

    Returns
    -------
    list

    Examples
    --------
    >>> from sktransfer.serialization import EstimatorSlot
    >>> slots = [EstimatorSlot(0), EstimatorSlot(1)]
    >>> graph = {"steps": [("a", slots[0]), ("b", {"inner": slots[1]})], "n": 2}
    >>> [slot.index for slot in find_instances(graph, EstimatorSlot)]
    [0, 1]
    """
    found, seen, stack = [], set(), [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, _LEAVES):
            continue
        seen.add(id(item))
        # Pushed reversed, so that items are met in their own order.
        if isinstance(item, types):
            found.append(item)
        elif isinstance(item, np.ndarray):
            if item.dtype == object:
                stack.extend(reversed(item.ravel().tolist()))
        elif isinstance(item, dict):
            stack.extend(reversed([*item.keys(), *item.values()]))
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(reversed(list(item)))
        elif hasattr(item, "__dict__"):
            stack.extend(reversed(list(vars(item).values())))
    return found


#: The fitted attributes that hold bytes (stored as uint8 tensors): the int8
#: networks OpenVINO runs (see :mod:`sktransfer.engine.calibration`).
BYTES_ATTRIBUTES = ("int8_networks_",)


def bytes_to_tensors(value, prefix, tensors):
    """Move binary files (a tokenizer's model file) out of a config into ``tensors``.

    JSON holds no bytes: each becomes a uint8 tensor named after where it
    sat, and ``{"__bytes__": name}`` stands in its place.

    Examples
    --------
    >>> tensors = {}
    >>> config = bytes_to_tensors({"files": {"a.model": b"\\x00\\x01"}}, "0/", tensors)
    >>> config, list(tensors)
    ({'files': {'a.model': {'__bytes__': '0/files/a.model/'}}}, ['0/files/a.model/'])
    >>> tensors_to_bytes(config, tensors)
    {'files': {'a.model': b'\\x00\\x01'}}
    """
    if isinstance(value, (bytes, bytearray)):
        tensors[prefix] = np.frombuffer(bytes(value), dtype=np.uint8)
        return {"__bytes__": prefix}
    if isinstance(value, dict):
        return {k: bytes_to_tensors(v, f"{prefix}{k}/", tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [bytes_to_tensors(v, f"{prefix}{i}/", tensors) for i, v in enumerate(value)]
    return value


def tensors_to_bytes(value, tensors):
    """Undo :func:`bytes_to_tensors`."""
    if isinstance(value, dict):
        if set(value) == {"__bytes__"}:
            return tensors[value["__bytes__"]].tobytes()
        return {k: tensors_to_bytes(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [tensors_to_bytes(v, tensors) for v in value]
    return value

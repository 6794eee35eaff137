"""Save and load fitted models as one file that holds no pickle.

A model file is a safetensors file:

- its tensors are every weight (backbones, heads, L2-SP references), and,
  when the saved object is a scikit-learn composite (a Pipeline, a
  FeatureUnion, a ColumnTransformer, a search...), one more uint8 tensor
  holding that object graph as written by :mod:`skops.io`, with each
  sktransfer estimator swapped for a small :class:`EstimatorSlot` that names
  its entry in the manifest;
- its metadata holds the manifest, as JSON: the format version, and per
  sktransfer estimator its class, its parameters, its fitted attributes
  (classes, target scaling, history...) and the configs that rebuild its
  networks (:func:`~sktransfer.backbones.state.backbone_state`,
  :func:`~sktransfer.backbones.state.module_state`), plus a CRC-32 of every
  tensor.

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

import copy
import json
import os
import tempfile
import zlib

import numpy as np
import safetensors
import safetensors.numpy
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .backbones.base import Backbone
from .backbones.state import (UntrustedTypeError, backbone_from_state, backbone_state,
                              check_json_able, class_names, is_trusted, module_from_state,
                              module_state)
from .features import PretrainedFeatureTransformer
from .finetune import FineTunedClassifier, FineTunedRegressor, _FineTuned

#: Written into every file; :func:`load` reads this version and older ones.
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
_SKTRANSFER_BASES = (PretrainedFeatureTransformer, _FineTuned)

# Fitted state that is not a plain attribute: networks go through their own
# state functions, the skorch net is rebuilt when needed, and the optimizer
# state stays out of files (as it stays out of pickles by default).
_NETWORK_ATTRS = ("backbone_", "head_", "l2sp_")
_SKIPPED_ATTRS = ("net_", "_optimizer_state")


class EstimatorSlot:
    """Stands in the skops part for the sktransfer estimator numbered ``index``.

    Parameters
    ----------
    index : int
        Its entry in the manifest's ``"estimators"`` list.
    """

    def __init__(self, index):
        self.index = index


_SLOT_TYPE = f"{EstimatorSlot.__module__}.{EstimatorSlot.__qualname__}"


def _skops_io():
    # Imported when needed: skops.io imports much of scikit-learn (its list
    # of trusted types), which ``import sktransfer`` should not pay for.
    import skops.io

    return skops.io


# -- save ------------------------------------------------------------------------------

def save(obj, path):
    """Write a fitted model to one file that loads without pickle.

    Parameters
    ----------
    obj : fitted estimator
        A :class:`~sktransfer.PretrainedFeatureTransformer`,
        :class:`~sktransfer.FineTunedClassifier` or
        :class:`~sktransfer.FineTunedRegressor`, or a fitted scikit-learn
        estimator holding them among ordinary ones (a ``Pipeline``,
        ``FeatureUnion``, ``ColumnTransformer``, a search's
        ``best_estimator_``).
    path : str or os.PathLike
        The file to write (``.skt`` by convention). It is written to a
        temporary file first and then renamed, so a failed save leaves
        nothing behind and never a half-written model.

    Raises
    ------
    NotFittedError
        When ``obj`` is not fitted.
    TypeError
        When ``obj`` is not an estimator, or a parameter or fitted attribute
        of an sktransfer estimator cannot be written as data (the message
        names it).

    See Also
    --------
    load : read the file back.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from torch import nn
    >>> import sktransfer
    >>> X = np.random.RandomState(0).rand(6, 4).astype(np.float32)
    >>> pft = sktransfer.PretrainedFeatureTransformer(nn.Linear(4, 3)).fit(X)
    >>> path = os.path.join(tempfile.mkdtemp(), "model.skt")
    >>> sktransfer.save(pft, path)
    >>> loaded = sktransfer.load(path)
    >>> bool((loaded.transform(X) == pft.transform(X)).all())
    True
    """
    metadata, tensors = _Writer().file(obj)
    _write_atomically(os.fspath(path), metadata, tensors)


class _Writer:
    """Turns an object into the metadata and tensors of a model file."""

    def __init__(self):
        self.entries = []          # manifest entries, one per sktransfer estimator
        self.tensors = {}          # tensor name -> numpy array
        self.index = {}            # id(estimator) -> its entry number
        self.aliases = {}          # tensor name -> name of an equal tensor stored

    def file(self, obj):
        """The safetensors metadata and tensors of ``obj``'s model file."""
        if isinstance(obj, _SKTRANSFER_BASES):
            check_is_fitted(obj)
            root, skops_bytes = {"estimator": self.add(obj)}, None
        elif isinstance(obj, BaseEstimator):
            check_is_fitted(obj)
            root, skops_bytes = {"sklearn": SKLEARN}, self.sklearn_part(obj)
        else:
            raise TypeError(
                f"sktransfer.save takes a fitted sktransfer estimator or a fitted "
                f"scikit-learn estimator (Pipeline, FeatureUnion, ColumnTransformer...) "
                f"holding them; got {type(obj).__module__}.{type(obj).__qualname__}")
        tensors = {k: np.ascontiguousarray(v) for k, v in self.tensors.items()}
        if skops_bytes is not None:
            tensors[SKLEARN] = np.frombuffer(skops_bytes, dtype=np.uint8)
        manifest = {"format_version": FORMAT_VERSION, "versions": _library_versions(),
                    "root": root, "estimators": self.entries, "aliases": self.aliases,
                    "checksums": {k: _checksum(v) for k, v in tensors.items()}}
        metadata = {FORMAT_KEY: FORMAT_NAME, MANIFEST: json.dumps(manifest)}
        return metadata, tensors

    def sklearn_part(self, obj):
        """skops bytes of ``obj`` with every sktransfer estimator in a slot."""
        found = _find_estimators(obj)
        # deepcopy with a prefilled memo: every reference to an sktransfer
        # estimator, wherever it sits (a Pipeline step, a ColumnTransformer's
        # transformers_, a search's cv_results_), becomes its slot; the
        # networks themselves are never copied.
        memo = {id(est): EstimatorSlot(self.add(est)) for est in found}
        graph = copy.deepcopy(obj, memo)
        try:
            return _skops_io().dumps(graph)
        except Exception as exc:
            raise TypeError(f"the scikit-learn part of {type(obj).__name__} cannot be "
                            f"written with skops: {exc}") from exc

    def add(self, est):
        """Describe ``est`` in the manifest and its tensors; return its number."""
        if id(est) in self.index:
            return self.index[id(est)]
        name = f"sktransfer.{type(est).__name__}"
        if ESTIMATORS.get(name) is not type(est):
            raise TypeError(f"{type(est).__module__}.{type(est).__qualname__} subclasses an "
                            f"sktransfer estimator; files hold only {sorted(ESTIMATORS)}. "
                            "Use joblib to save it in the same environment.")
        number = len(self.entries)
        self.index[id(est)] = number
        entry = {"class": name}
        self.entries.append(entry)
        entry["params"] = self.params(est, number)
        entry["fitted"] = _is_fitted(est)
        if entry["fitted"]:
            entry.update(self.fitted_state(est, number))
        return number

    def params(self, est, number):
        params = {}
        for key, value in est.get_params(deep=False).items():
            if key == "backbone" and not isinstance(value, str) and value is not None:
                params[key] = self.backbone_param(est, value, f"{number}/param.backbone/")
                continue
            try:
                params[key] = _to_json(value)
            except TypeError as exc:
                raise TypeError(
                    f"{type(est).__name__}'s parameter {key}={value!r} cannot be written "
                    f"to a model file ({exc}); parameters must be plain values (None, "
                    f"numbers, strings, lists, tuples, dicts). Set it to such a value "
                    f"(est.set_params({key}=...)) before saving, or save with joblib for "
                    "the same environment.") from None
        return params

    def backbone_param(self, est, value, prefix):
        if isinstance(value, _SKTRANSFER_BASES):
            return {"__estimator__": self.add(value)}
        if isinstance(value, nn.Module):
            config, tensors = module_state(value)
            check_json_able(config, f"{type(est).__name__}'s backbone parameter")
            self.put(prefix, tensors)
            return {"__module__": config}
        if isinstance(value, Backbone):
            return {"__backbone__": self.backbone(value, prefix, "backbone parameter")}
        raise TypeError(
            f"{type(est).__name__}'s parameter backbone={value!r} cannot be written to a "
            "model file: a file holds a spec string, an nn.Module, a Backbone or a fitted "
            "sktransfer estimator, not a factory function. Pass the module it returns, "
            "or save with joblib for the same environment.")

    def backbone(self, backbone, prefix, what, same_as=None):
        config, tensors = backbone_state(backbone)
        config = self.bytes_to_tensors(config, prefix + "files/")
        check_json_able(config, what)
        self.put(prefix, tensors, same_as)
        return config

    def fitted_state(self, est, number):
        # A frozen module backbone equals its backbone parameter: stored once.
        state = {"backbone": self.backbone(est.backbone_, f"{number}/backbone/", "the backbone",
                                           same_as=f"{number}/param.backbone/"),
                 "networks": {}}
        # The head and the L2-SP penalty (None when l2sp=0) of a fine-tuner.
        for attr in ("head_", "l2sp_"):
            if attr not in vars(est):
                continue
            module, config = getattr(est, attr), None
            if module is not None:
                config, tensors = module_state(module)
                check_json_able(config, attr)
                self.put(f"{number}/{attr}/", tensors)
            state["networks"][attr] = config
        params = est.get_params(deep=False)
        attributes = {}
        for key, value in vars(est).items():
            if key in params or key in _NETWORK_ATTRS or key in _SKIPPED_ATTRS:
                continue
            if key == "history_":
                value = list(value)  # a skorch History is a list of dicts
            try:
                attributes[key] = _to_json(value)
            except TypeError as exc:
                raise TypeError(f"{type(est).__name__}'s fitted attribute {key} cannot be "
                                f"written to a model file ({exc})") from None
        state["attributes"] = attributes
        return state

    def put(self, prefix, tensors, same_as=None):
        """Add ``tensors`` under ``prefix``; one equal to ``same_as + key`` becomes an alias."""
        for key, array in tensors.items():
            twin = self.tensors.get(f"{same_as}{key}") if same_as else None
            if (twin is not None and twin.dtype == array.dtype and twin.shape == array.shape
                    and np.array_equal(twin, array)):
                self.aliases[prefix + key] = f"{same_as}{key}"
            else:
                self.tensors[prefix + key] = array

    def bytes_to_tensors(self, value, prefix):
        """Move binary files (a tokenizer's model file) out of the JSON into tensors."""
        if isinstance(value, (bytes, bytearray)):
            self.tensors[prefix] = np.frombuffer(bytes(value), dtype=np.uint8)
            return {"__bytes__": prefix}
        if isinstance(value, dict):
            return {k: self.bytes_to_tensors(v, f"{prefix}{k}/") for k, v in value.items()}
        if isinstance(value, list):
            return [self.bytes_to_tensors(v, f"{prefix}{i}/") for i, v in enumerate(value)]
        return value


def _is_fitted(est):
    try:
        check_is_fitted(est)
    except NotFittedError:
        return False
    return True


def _find_estimators(obj):
    """Every sktransfer estimator reachable from ``obj``, in the order first met."""
    found, seen, stack = {}, set(), [obj]
    leaves = (str, bytes, int, float, complex, type(None), type, nn.Module)
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, leaves):
            continue
        seen.add(id(item))
        if isinstance(item, _SKTRANSFER_BASES):
            found[id(item)] = item
            continue
        if isinstance(item, np.ndarray):
            if item.dtype == object:
                stack.extend(reversed(item.ravel().tolist()))
        elif isinstance(item, dict):
            stack.extend(reversed([*item.keys(), *item.values()]))
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(reversed(list(item)))
        elif hasattr(item, "__dict__"):
            stack.extend(reversed(list(vars(item).values())))
    return list(found.values())


def _to_json(value):
    """``value`` as JSON data that :func:`_from_json` turns back into it exactly.

    Tuples, numpy arrays and dicts with keys other than strings are tagged,
    so they come back as what they were.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return {"__scalar__": [value.dtype.str, value.item()]}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, tuple) and type(value) is tuple:
        return {"__tuple__": [_to_json(v) for v in value]}
    if isinstance(value, dict):
        items = [[_to_json(k), _to_json(v)] for k, v in value.items()]
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
        return {"__ndarray__": ["O", list(array.shape), [_to_json(v) for v in values]]}
    raise TypeError(f"an array of dtype {array.dtype} is not plain data")


def _from_json(value):
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tuple__" in value:
        return tuple(_from_json(v) for v in value["__tuple__"])
    if "__items__" in value:
        return {_hashable(_from_json(k)): _from_json(v) for k, v in value["__items__"]}
    if "__scalar__" in value:
        dtype, item = value["__scalar__"]
        return np.dtype(_plain_dtype(dtype)).type(item)
    if "__ndarray__" in value:
        dtype, shape, data = value["__ndarray__"]
        if dtype == "O":
            out = np.empty(len(data), dtype=object)
            out[:] = [_from_json(v) for v in data]
            return out.reshape(shape)
        return np.array(data, dtype=_plain_dtype(dtype)).reshape(shape)
    return {k: _from_json(v) for k, v in value.items()}


def _plain_dtype(name):
    """Refuse any dtype but booleans, numbers and unicode strings (no object, no void)."""
    dtype = np.dtype(str(name))
    if dtype.kind not in "biufU":
        raise ValueError(f"dtype {name!r} is not allowed in a model file")
    return dtype


def _hashable(key):
    return tuple(key) if isinstance(key, list) else key


def _library_versions():
    import sklearn
    import skops
    import torch

    from . import __version__

    return {"sktransfer": __version__, "torch": torch.__version__,
            "scikit-learn": sklearn.__version__, "skops": skops.__version__}


def _checksum(array):
    """CRC-32 of an array's bytes: catches corruption, not deliberate edits."""
    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))


def _write_atomically(path, metadata, tensors):
    """Write to a temporary file beside ``path``, then rename it over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".sktransfer-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        safetensors.numpy.save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# -- load ------------------------------------------------------------------------------

def load(path, trusted=None):
    """Read a model written by :func:`save`, without unpickling anything.

    Only trusted classes are ever imported: sktransfer's estimators,
    scikit-learn's (as :mod:`skops.io` trusts them by default), networks
    rebuilt from their ``"torchvision:"`` / ``"timm:"`` / ``"hf:"`` spec, and
    ``torch.nn``'s modules. Everything else the file names must be listed in
    ``trusted``, or nothing is loaded.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :func:`save`.
    trusted : list of str, optional
        Further class names to trust, as ``"<module>.<qualname>"``: your own
        ``nn.Module`` classes (``["mypackage.nets.TinyNet"]``) and any
        scikit-learn-compatible class skops does not trust by default.
        Trust a name only if you trust where the file came from: loading
        imports and uses that class.

    Returns
    -------
    estimator
        The saved object, with predictions equal to the saved model's.

    Raises
    ------
    UntrustedTypeError
        When the file names classes that are not trusted; the message lists
        every one of them (from the networks and the scikit-learn part
        together), to pass as ``trusted=`` after checking them.
    ValueError
        When the file is not a model file, is truncated or corrupted (the
        message names the file), was written by a newer format version, or
        names an estimator class that sktransfer does not save.

    See Also
    --------
    save : write such a file.
    """
    path = os.fspath(path)
    trusted = _check_trusted(trusted)
    with _open(path) as handle:
        manifest = _read_manifest(handle, path)
        _check_manifest(manifest, path)
        _check_carried_files(manifest, path)
        sklearn_part = _read_tensors(handle, manifest, path, [SKLEARN]).get(SKLEARN)
        if sklearn_part is not None:
            sklearn_part = sklearn_part.tobytes()
        untrusted = _untrusted_names(manifest, sklearn_part, trusted, path)
        if untrusted:
            error = UntrustedTypeError(untrusted)
            error.args = (f"{path}: {error.args[0]} Only do so after checking them.",)
            raise error
        # Tensors are read only now, after every check.
        tensors = _read_tensors(handle, manifest, path,
                                [k for k in handle.keys() if k != SKLEARN])
    try:
        for alias, name in manifest.get("aliases", {}).items():
            # A copy: the two modules must not share memory (one may be trained).
            tensors[alias] = tensors[name].copy()
        return _Reader(manifest, tensors, trusted).root(sklearn_part)
    except (UntrustedTypeError, ImportError):
        raise
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: the model file is inconsistent ({type(exc).__name__}: "
                         f"{exc}); it was altered or corrupted") from exc


def _check_trusted(trusted):
    if trusted is None:
        return []
    if isinstance(trusted, str):
        return [trusted]
    if isinstance(trusted, (list, tuple, set, frozenset)) and all(
            isinstance(name, str) for name in trusted):
        return sorted(trusted)
    raise TypeError(f"trusted must be a list of class names such as "
                    f"['mypackage.nets.TinyNet']; got {trusted!r}")


def _open(path):
    try:
        return safetensors.safe_open(path, framework="np")
    except FileNotFoundError:
        raise
    except Exception as exc:  # safetensors' own error type is not public
        raise ValueError(f"{path} cannot be read as an sktransfer model file: it is not a "
                         f"safetensors file, or it is truncated or corrupted ({exc})") from exc


def _read_manifest(handle, path):
    metadata = handle.metadata() or {}
    if metadata.get(FORMAT_KEY) != FORMAT_NAME or MANIFEST not in metadata:
        raise ValueError(f"{path} is not an sktransfer model file (a safetensors file "
                         f"without its manifest); write one with sktransfer.save")
    try:
        manifest = json.loads(metadata[MANIFEST])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: its manifest is corrupted ({exc})") from exc
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: its manifest is corrupted (not a JSON object)")
    return manifest


def _read_tensors(handle, manifest, path, names):
    """The named tensors, each checked against the manifest's CRC-32."""
    checksums = manifest.get("checksums", {})
    present = set(handle.keys())
    unknown = present - set(checksums)
    if unknown:
        raise ValueError(f"{path}: tensors {sorted(unknown)[:5]} have no checksum; the file "
                         "was altered")
    tensors = {}
    for name in names:
        if name not in present:
            continue
        try:
            array = handle.get_tensor(name)
        except Exception as exc:
            raise ValueError(f"{path}: tensor {name!r} cannot be read ({exc}); the file is "
                             "truncated or corrupted") from exc
        if _checksum(array) != checksums[name]:
            raise ValueError(f"{path}: tensor {name!r} fails its checksum; the file is "
                             "corrupted (download or copy it again)")
        tensors[name] = array
    return tensors


def _check_manifest(manifest, path):
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"{path}: invalid format version {version!r}")
    if version > FORMAT_VERSION:
        written_by = manifest.get("versions", {}).get("sktransfer", "a newer sktransfer")
        raise ValueError(
            f"{path} uses model file format version {version} (written by sktransfer "
            f"{written_by}); this sktransfer reads format version {FORMAT_VERSION} and "
            "older. Upgrade sktransfer to load it.")
    unknown = [e.get("class") if isinstance(e, dict) else e
               for e in manifest.get("estimators", [])
               if not isinstance(e, dict) or e.get("class") not in ESTIMATORS]
    if unknown:
        raise ValueError(f"{path} names {unknown} as estimator classes; a model file may "
                         f"only name {sorted(ESTIMATORS)}. It was altered or not written "
                         "by sktransfer.save; nothing was loaded.")


#: File kinds a library may unpickle when it reads them; carried files never are.
_PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt", ".joblib", ".npy",
                    ".npz")


def _check_carried_files(manifest, path):
    """Refuse carried files (a tokenizer's) of a kind that could be unpickled.

    Writers save tokenizers as JSON and text (and sentencepiece models); a
    file edited to carry a pickle for a legacy tokenizer class to read is
    refused before anything is written to disk.
    """
    def visit(node):
        if isinstance(node, dict):
            files = node.get("files") if node.get("kind") == "tokenize" else None
            for name in files or ():
                if str(name).lower().endswith(_PICKLE_SUFFIXES):
                    raise ValueError(f"{path} carries the file {name!r} for a tokenizer; "
                                     "model files never carry pickles. It was altered; "
                                     "nothing was loaded.")
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(manifest.get("estimators", []))


def _untrusted_names(manifest, sklearn_part, trusted, path):
    """Every class the file names that is not trusted (networks and skops part)."""
    untrusted = {n for n in class_names(manifest.get("estimators", []))
                 if not is_trusted(n, trusted)}
    if sklearn_part is not None:
        try:
            skops_types = _skops_io().get_untrusted_types(data=sklearn_part)
        except Exception as exc:
            raise ValueError(f"{path}: its scikit-learn part cannot be read ({exc}); the "
                             "file is corrupted") from exc
        untrusted.update(t for t in skops_types if t != _SLOT_TYPE and t not in trusted)
    return sorted(untrusted)


class _Reader:
    """Rebuilds the estimators of a manifest, then the object graph around them."""

    def __init__(self, manifest, tensors, trusted):
        self.manifest = manifest
        self.tensors = tensors
        self.trusted = trusted
        self.built = {}

    def root(self, sklearn_part):
        root = self.manifest["root"]
        if "estimator" in root:
            return self.estimator(root["estimator"])
        graph = _skops_io().loads(sklearn_part, trusted=[_SLOT_TYPE, *self.trusted])
        slots = _find_slots(graph)
        # The mirror of save: a prefilled memo puts each estimator where its slot was.
        memo = {id(slot): self.estimator(slot.index) for slot in slots}
        return copy.deepcopy(graph, memo)

    def estimator(self, number):
        number = int(number)
        if number in self.built:
            return self.built[number]
        entry = self.manifest["estimators"][number]
        cls = ESTIMATORS[entry["class"]]
        params = {key: self.param(key, value, number)
                  for key, value in entry["params"].items()}
        est = cls(**params)
        self.built[number] = est
        if entry.get("fitted"):
            self.fitted_state(est, entry, number)
        return est

    def param(self, key, value, number):
        if key == "backbone" and isinstance(value, dict):
            if "__estimator__" in value:
                return self.estimator(value["__estimator__"])
            if "__module__" in value:
                return module_from_state(value["__module__"],
                                         self.prefixed(f"{number}/param.backbone/"),
                                         trusted=self.trusted)
            if "__backbone__" in value:
                return self.backbone(value["__backbone__"], f"{number}/param.backbone/")
        return _from_json(value)

    def backbone(self, config, prefix):
        config = self.tensors_to_bytes(config)
        return backbone_from_state(config, self.prefixed(prefix), trusted=self.trusted)

    def fitted_state(self, est, entry, number):
        est.backbone_ = self.backbone(entry["backbone"], f"{number}/backbone/")
        for attr, config in entry["networks"].items():
            if attr not in ("head_", "l2sp_"):
                raise ValueError(f"unknown network {attr!r}")
            setattr(est, attr, None if config is None else module_from_state(
                config, self.prefixed(f"{number}/{attr}/"), trusted=self.trusted))
        for key, value in entry["attributes"].items():
            if not key.isidentifier() or key.startswith("__"):
                raise ValueError(f"{key!r} is not a fitted attribute name")
            value = _from_json(value)
            if key == "history_":
                from skorch.history import History

                value = History(value)
            setattr(est, key, value)

    def prefixed(self, prefix):
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    def tensors_to_bytes(self, value):
        if isinstance(value, dict):
            if set(value) == {"__bytes__"}:
                return self.tensors[value["__bytes__"]].tobytes()
            return {k: self.tensors_to_bytes(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.tensors_to_bytes(v) for v in value]
        return value


def _find_slots(obj):
    """Every :class:`EstimatorSlot` in a graph skops loaded."""
    slots, seen, stack = [], set(), [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, (str, bytes, int, float, type(None), type)):
            continue
        seen.add(id(item))
        if isinstance(item, EstimatorSlot):
            slots.append(item)
        elif isinstance(item, np.ndarray):
            if item.dtype == object:
                stack.extend(item.ravel().tolist())
        elif isinstance(item, dict):
            stack.extend([*item.keys(), *item.values()])
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif hasattr(item, "__dict__"):
            stack.extend(vars(item).values())
    return slots

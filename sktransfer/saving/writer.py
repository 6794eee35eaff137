""":func:`save`: a fitted model as one file that holds no pickle.

The layout is described in :mod:`sktransfer.saving.format`; reading it
back is :mod:`sktransfer.saving.reader`'s.
"""

import contextlib
import copy
import json
import os

import numpy as np
import safetensors.numpy
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .._utils.files import write_atomically
from .._version import __version__
from .._utils.validation import is_fitted
from ..backbones import Backbone, adapter_state, backbone_state, self_contained
from ..persistence.checks import check_networks
from ..persistence.codec import check_json_able, to_json
from ..persistence.modules import module_state
from ..persistence.trust import UntrustedContentError, user_classes
from ..serialization import EstimatorSlot
from .format import (ESTIMATORS, FORMAT_KEY, FORMAT_NAME, FORMAT_VERSION, MANIFEST, SKLEARN,
                     SKTRANSFER_BASES, BYTES_ATTRIBUTES, bytes_to_tensors, checksum,
                     find_instances, skops_io)

# Fitted state that is not a plain attribute: networks go through their own
# state functions, the skorch net is rebuilt when needed, and the optimizer
# state stays out of files (as it stays out of pickles by default).
_NETWORK_ATTRS = ("backbone_", "head_", "l2sp_")
_SKIPPED_ATTRS = ("net_", "_optimizer_state")

__all__ = ["save"]


def save(obj, path, *, include_base=False):
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
    include_base : bool, default=False
        For a model fine-tuned with an ``adapter``: also store its pretrained
        base network. By default the file holds the adapter, the head and a
        reference to the base (its spec, weights and a digest of its
        tensors): a file of megabytes rather than gigabytes, which
        :func:`load` completes by loading the base where the fit found it (a
        local directory or file, or the download cache) and refuses when
        that base's digest differs. ``True`` writes a self-contained file,
        for a machine where the base cannot be found. Other models always
        hold their whole network.

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
    with self_contained() if include_base else contextlib.nullcontext():
        metadata, tensors = _Writer().file(obj)
    # Through a temporary file beside it, synced, then renamed: a crash or a
    # full disk never leaves a short file under the model's name.
    write_atomically(os.fspath(path),
                     lambda tmp: safetensors.numpy.save_file(tensors, tmp, metadata=metadata),
                     make_folder=False)


class _Writer:
    """Turns an object into the metadata and tensors of a model file."""

    def __init__(self):
        self.entries = []          # manifest entries, one per sktransfer estimator
        self.tensors = {}          # tensor name -> numpy array
        self.index = {}            # id(estimator) -> its entry number
        self.aliases = {}          # tensor name -> name of an equal tensor stored

    def file(self, obj):
        """The safetensors metadata and tensors of ``obj``'s model file."""
        if isinstance(obj, SKTRANSFER_BASES):
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
                    "checksums": {k: checksum(v) for k, v in tensors.items()}}
        metadata = {FORMAT_KEY: FORMAT_NAME, MANIFEST: json.dumps(manifest)}
        return metadata, tensors

    def sklearn_part(self, obj):
        """skops bytes of ``obj`` with every sktransfer estimator in a slot."""
        found = find_instances(obj, SKTRANSFER_BASES)
        # deepcopy with a prefilled memo: every reference to an sktransfer
        # estimator, wherever it sits (a Pipeline step, a ColumnTransformer's
        # transformers_, a search's cv_results_), becomes its slot; the
        # networks themselves are never copied.
        memo = {id(est): EstimatorSlot(self.add(est)) for est in found}
        graph = copy.deepcopy(obj, memo)
        try:
            return skops_io().dumps(graph)
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
        # Numbered before its parameters are described: an estimator given as
        # another's backbone refers to its number.
        self.index[id(est)] = number
        entry = {"class": name}
        self.entries.append(entry)
        entry["params"] = self.params(est, number)
        entry["fitted"] = is_fitted(est)
        if entry["fitted"]:
            entry.update(self.fitted_state(est, number))
        return number

    def params(self, est, number):
        params = {}
        for key, value in est.get_params(deep=False).items():
            if key == "backbone" and not isinstance(value, str) and value is not None:
                params[key] = self.backbone_param(est, value, f"{number}/param.backbone/")
                continue
            if key == "adapter" and value is not None and not isinstance(value, str):
                # A peft config, as the plain fields its loader admits.
                params[key] = {"__adapter__": adapter_state(value)}
                continue
            try:
                params[key] = to_json(value)
            except TypeError as exc:
                raise TypeError(
                    f"{type(est).__name__}'s parameter {key}={value!r} cannot be written "
                    f"to a model file ({exc}); parameters must be plain values (None, "
                    f"numbers, strings, lists, tuples, dicts). Set it to such a value "
                    f"(est.set_params({key}=...)) before saving, or save with joblib for "
                    "the same environment.") from None
        return params

    def backbone_param(self, est, value, prefix):
        if isinstance(value, SKTRANSFER_BASES):
            return {"__estimator__": self.add(value)}
        if isinstance(value, nn.Module):
            config, tensors = module_state(value)
            check_json_able(config, f"{type(est).__name__}'s backbone parameter")
            _check_loadable(config, value, f"{type(est).__name__}'s backbone parameter")
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
        config = bytes_to_tensors(config, prefix + "files/", self.tensors)
        check_json_able(config, what)
        _check_loadable(config, backbone.module, what)
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
                _check_loadable(config, module, attr)
                self.put(f"{number}/{attr}/", tensors)
            state["networks"][attr] = config
        params = est.get_params(deep=False)
        attributes = {}
        for key, value in vars(est).items():
            if key in params or key in _NETWORK_ATTRS or key in _SKIPPED_ATTRS:
                continue
            if key == "history_":
                value = list(value)  # a skorch History is a list of dicts
            if key in BYTES_ATTRIBUTES:
                value = bytes_to_tensors(value, f"{number}/attr.{key}/", self.tensors)
            try:
                attributes[key] = to_json(value)
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


def _library_versions():
    import sklearn
    import skops
    import torch

    # Read from the package already loaded (whoever imports this module has
    # imported sktransfer), not imported: sktransfer's __init__ imports this
    # module, and an import back would be a cycle.
    return {"sktransfer": __version__, "torch": torch.__version__,
            "scikit-learn": sklearn.__version__, "skops": skops.__version__}


def _check_loadable(config, module, what):
    """Refuse now what :func:`sktransfer.load` would refuse: a file that saves must load.

    A module whose instance attribute shadows a method of its class (an
    assigned ``forward``), for example, is data :func:`~sktransfer.load`
    never sets.
    """
    try:
        check_networks(config, classes=user_classes(module))
    except UntrustedContentError as exc:
        raise TypeError(f"{what} cannot be written to a model file: sktransfer.load would "
                        f"refuse {exc.names[0]!r} ({exc.why}). Make it a plain attribute "
                        "under another name, or save with joblib for the same "
                        "environment.") from None

""":func:`load`: a model file read back, without unpickling anything.

Everything the file says is checked before anything is built: its format
and version, the kinds of files it carries, the checksum of every tensor,
and every class it names against what the user trusts. Only then are its
tensors read and its estimators rebuilt. The layout is described in
:mod:`sktransfer.saving.format`.
"""

import copy
import json
import os

import safetensors

from ..backbones import BaseNetworkError, adapter_from_state, backbone_from_state
from ..persistence.checks import check_networks
from ..persistence.codec import from_json
from ..persistence.modules import module_from_state
from ..persistence.trust import (UntrustedContentError, UntrustedTypeError, check_attribute_key,
                                 class_names, is_trusted)
from ..serialization import EstimatorSlot
from ..engine.calibration import check_record
from .format import (BYTES_ATTRIBUTES, ESTIMATORS, FORMAT_KEY, FORMAT_NAME, FORMAT_VERSION,
                     MANIFEST, SKLEARN, SLOT_TYPE, checksum, find_instances, skops_io,
                     tensors_to_bytes)

#: File kinds a library may unpickle when it reads them; carried files never are.
_PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt", ".joblib", ".npy",
                    ".npz")

__all__ = ["load"]


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
    BaseNetworkError
        A subclass of ``ValueError``: for a model fine-tuned with an adapter
        and saved without ``include_base=True``, when the pretrained base it
        refers to cannot be loaded here, or differs from the one it was
        fitted on (see :func:`save`).

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
        _check_fitted_keys(manifest)
        check_networks(manifest.get("estimators", []), trusted=trusted)
        # Tensors are read only now, after every check.
        tensors = _read_tensors(handle, manifest, path,
                                [k for k in handle.keys() if k != SKLEARN])
        _check_int8_networks(manifest, tensors)
    try:
        for alias, name in manifest.get("aliases", {}).items():
            # A copy: the two modules must not share memory (one may be trained).
            tensors[alias] = tensors[name].copy()
        return _Reader(manifest, tensors, trusted).root(sklearn_part)
    except (UntrustedTypeError, ImportError, BaseNetworkError):
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
        if checksum(array) != checksums[name]:
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
        raise UntrustedContentError(
            ", ".join(map(str, unknown)),
            f"{path} names it as an estimator class; a model file may only name "
            f"{sorted(ESTIMATORS)}")


def _check_carried_files(manifest, path):
    """Refuse carried files (a tokenizer's, a feature extractor's) that could be unpickled.

    Writers save tokenizers and extractors as JSON and text (and
    sentencepiece models); a file edited to carry a pickle for a legacy
    class to read is refused before anything is written to disk.
    """
    def visit(node):
        if isinstance(node, dict):
            files = node.get("files") if "kind" in node else None
            for name in files or ():
                if str(name).lower().endswith(_PICKLE_SUFFIXES):
                    raise UntrustedContentError(
                        str(name), f"{path} carries the file {name!r} for a {node['kind']} preprocess, "
                                   "and model files never carry pickles")
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(manifest.get("estimators", []))


def _check_fitted_keys(manifest):
    """Each fitted attribute key is data: never a dunder, a method, a property or a parameter.

    Checked before any estimator is built (an instance attribute named
    ``predict`` would shadow the method).
    """
    for entry in manifest.get("estimators", []):
        cls = ESTIMATORS[entry["class"]]
        for key in entry.get("attributes", {}) if entry.get("fitted") else ():
            check_attribute_key(cls, key)
            # scikit-learn's naming: learned state ends with "_", private starts
            # with it; any other name is a parameter's or a method's.
            if not (key.endswith("_") or key.startswith("_")):
                raise UntrustedContentError(key, "a fitted attribute's name starts or "
                                                 "ends with '_'")
        for key in entry.get("networks", {}) if entry.get("fitted") else ():
            if key not in ("head_", "l2sp_"):
                raise UntrustedContentError(str(key), "a fitted network is head_ or l2sp_")


def _check_int8_networks(manifest, tensors):
    """Each stored int8 network is a well-formed record whose graph is OpenVINO's own IR.

    Checked before any estimator is built: OpenVINO's reader guesses a
    graph's format, and another format (ONNX) may name files of this
    machine as its weights.
    """
    for entry in manifest.get("estimators", []):
        stored = entry.get("attributes", {}).get("int8_networks_") if entry.get("fitted") \
            else None
        if stored is None:
            continue
        try:
            networks = tensors_to_bytes(from_json(stored), tensors)
            if not isinstance(networks, dict):
                raise ValueError("int8_networks_ must be a dict of records")
            for purpose, record in networks.items():
                check_record(record, f"int8_networks_[{purpose!r}]")
        except (KeyError, TypeError, ValueError) as exc:
            raise UntrustedContentError("int8_networks_", str(exc).strip("'\"")) from None


def _untrusted_names(manifest, sklearn_part, trusted, path):
    """Every class the file names that is not trusted (networks and skops part)."""
    untrusted = {n for n in class_names(manifest.get("estimators", []))
                 if not is_trusted(n, trusted)}
    if sklearn_part is not None:
        try:
            skops_types = skops_io().get_untrusted_types(data=sklearn_part)
        except Exception as exc:
            raise ValueError(f"{path}: its scikit-learn part cannot be read ({exc}); the "
                             "file is corrupted") from exc
        untrusted.update(t for t in skops_types if t != SLOT_TYPE and t not in trusted)
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
        graph = skops_io().loads(sklearn_part, trusted=[SLOT_TYPE, *self.trusted])
        slots = find_instances(graph, EstimatorSlot)
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
        if key == "adapter" and isinstance(value, dict) and "__adapter__" in value:
            return adapter_from_state(value["__adapter__"])
        return from_json(value)

    def backbone(self, config, prefix):
        config = tensors_to_bytes(config, self.tensors)
        return backbone_from_state(config, self.prefixed(prefix), trusted=self.trusted)

    def fitted_state(self, est, entry, number):
        est.backbone_ = self.backbone(entry["backbone"], f"{number}/backbone/")
        for attr, config in entry["networks"].items():
            setattr(est, attr, None if config is None else module_from_state(
                config, self.prefixed(f"{number}/{attr}/"), trusted=self.trusted))
        for key, value in entry["attributes"].items():
            value = from_json(value)
            if key in BYTES_ATTRIBUTES:
                value = tensors_to_bytes(value, self.tensors)
            if key == "history_":
                from skorch.history import History

                value = History(value)
            setattr(est, key, value)

    def prefixed(self, prefix):
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}

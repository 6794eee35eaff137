"""Engines that stay with a fitted estimator: built on first use, reused, never pickled.

:class:`ServesFromEngine` gives an estimator ``_engine_for``, which returns
the engine for one kind of call (``"transform"``, ``"proba"``, ...) and
builds it only when there is none yet for the estimator's current network,
weights, device, ``runtime``, ``quantize``, precision and call settings. So
the first call after ``fit`` or loading builds (copies the weights to the
GPU, compiles, exports), and every later call, from any thread, reuses.

Engines are built from a :class:`~sktransfer.engine.snapshot.ModelSnapshot`
of each fitted module, which every call checks (by the identity of the
module tree's objects and the tensors' versions, never by reading weights):
a module changed in any way (weights, submodules, buffers, plain
attributes) gets a new snapshot and new engines.

On an accelerator the weights are copied there once per estimator and
shared by all of its engines; :meth:`ServesFromEngine.release_engine` (or
dropping the estimator) gives the memory back. Engines are left out of
pickles and deep copies, and ``clone`` never sees them (they are not
parameters), so a search's clones build their own and free them with the
clone.
"""

import inspect
import threading
import weakref

import numpy as np
import torch

from .._utils.device import resolve_device
from .._utils.validation import Options
from .calibration import CALIBRATION_SAMPLES, record_digest, require_nncf
from .merge import merged_network
from .module import InferenceModule, private_copy, uses_convolutions
from .runtimes import QUANTIZATIONS, RUNTIMES, Engine, build_engine, check_runtime
from .snapshot import ModelSnapshot

#: The estimators whose int8 OpenVINO engines are being calibrated (in their fit).
_CALIBRATING = weakref.WeakSet()

#: The constraints of ``runtime`` and ``quantize`` (see sktransfer._utils.validation).
ENGINE_CONSTRAINTS = {
    "runtime": [Options(RUNTIMES)],
    "quantize": [None, Options(QUANTIZATIONS)],
}

#: Each estimator's engines, outside its ``__dict__``: a prediction leaves the
#: estimator's attributes as they were (scikit-learn checks it), pickles,
#: deep copies and saved files never see them, and they go with the estimator.
_HELD = weakref.WeakKeyDictionary()
_HELD_LOCK = threading.Lock()


class _Held:
    """What one estimator's engines keep: by call kind, the snapshots and resident copies
    they are built from, a build lock."""

    def __init__(self):
        self.engines = {}  # purpose -> (key, snapshots, engine)
        self.snapshots = {}  # id(fitted module) -> ModelSnapshot (which holds the module)
        self.resident = None
        self.lock = threading.Lock()
        self.int8_digests = {}  # purpose -> (int8 record, its digest)

    def snapshot(self, module):
        """The current snapshot of ``module``, taken anew if it changed. Called under ``lock``."""
        kept = self.snapshots.get(id(module))
        if kept is not None and kept.source is module and kept.current():
            return kept
        snapshot = self.snapshots[id(module)] = ModelSnapshot(module)
        if kept is not None:
            # What was built from the old snapshot is out of date: let it go now.
            self.engines = {purpose: entry for purpose, entry in self.engines.items()
                            if kept not in entry[1]}
            if self.resident is not None:
                self.resident["modules"] = [(s, c) for s, c in self.resident["modules"]
                                            if s is not kept]
        return snapshot


def _held(estimator):
    held = _HELD.get(estimator)
    if held is None:
        with _HELD_LOCK:
            held = _HELD.setdefault(estimator, _Held())
    return held


def engine_purposes(estimator):
    """The kinds of call (``"transform"``, ``"proba"``, ...) ``estimator`` holds a built engine for.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sktransfer import PretrainedFeatureTransformer
    >>> X = np.ones((2, 3), dtype=np.float32)
    >>> pft = PretrainedFeatureTransformer(nn.Linear(3, 2)).fit(X)
    >>> _ = pft.transform(X)
    >>> engine_purposes(pft)
    ['transform']
    >>> engine_purposes(pft.release_engine())
    []
    """
    held = _HELD.get(estimator)
    return [] if held is None else sorted(held.engines)


#: Fit samples the precision probe and the int8 calibration run over (at
#: most): NNCF's default calibration subset.
FIT_PROBE = CALIBRATION_SAMPLES
#: The agreement bf16 must show with float32 on the fit samples before
#: ``precision="auto"`` uses it: the least cosine similarity of embeddings...
FEATURE_COSINE = 0.9999
#: ...and the largest difference of probabilities (with the same labels).
PROBABILITY_GAP = 1e-3


def features_agree(reference, candidate):
    """``(agrees, least cosine similarity)`` of two ``(n, d)`` outputs, row by row."""
    a, b = np.asarray(reference, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = float(np.min(np.where(norms > 0, (a * b).sum(1) / np.maximum(norms, 1e-300),
                                   (a == b).all(1))))
    return cosine >= FEATURE_COSINE, cosine


def probabilities_agree(reference, candidate):
    """``(agrees, largest difference)``: the same labels (the most probable class, and
    each probability's side of 0.5) and probabilities within :data:`PROBABILITY_GAP`."""
    a, b = np.asarray(reference, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    gap = float(np.abs(a - b).max()) if a.size else 0.0
    same = np.array_equal(a.argmax(1), b.argmax(1)) and np.array_equal(a >= 0.5, b >= 0.5)
    return same and gap <= PROBABILITY_GAP, gap


class ServesFromEngine:
    """Mixin: resident inference engines for an estimator with ``device``,
    ``precision``, ``runtime`` and ``quantize`` parameters.

    An estimator using it sets ``_network_identity``: a function of a tuple
    of :class:`~sktransfer.engine.snapshot.ModelSnapshot` giving plain values
    that name what their modules compute (structure and weights, by value),
    which ties an int8 network calibrated at fit to the network it was made
    from. The estimators use the feature cache's
    :func:`~sktransfer.feature_cache.keys.snapshots_key` (a room above this
    one, hence not imported here).
    """

    def release_engine(self):
        """Free what inference keeps between calls: device weights, compiled code, ONNX sessions.

        The next ``transform`` or ``predict`` builds them again. Dropping the
        estimator (``del``) frees the same memory. On CUDA the memory goes
        back to the device, not only to torch's cache.

        Returns
        -------
        self

        Examples
        --------
        >>> import numpy as np
        >>> from torch import nn
        >>> from sktransfer import PretrainedFeatureTransformer
        >>> X = np.ones((4, 3), dtype=np.float32)
        >>> pft = PretrainedFeatureTransformer(nn.Linear(3, 2)).fit(X)
        >>> pft.transform(X).shape
        (4, 2)
        >>> pft.release_engine().transform(X).shape
        (4, 2)
        """
        held = _HELD.pop(self, None)
        on_cuda = held is not None and held.resident is not None \
            and held.resident["device"].type == "cuda"
        del held
        if on_cuda:
            torch.cuda.empty_cache()
        return self

    def _check_engine_params(self, fit=True):
        """Refuse a ``runtime``/``quantize``/device combination that cannot run; return the
        autocast dtype. At ``fit``, int8 under OpenVINO also needs NNCF to calibrate."""
        if fit and self.runtime == "openvino" and self.quantize == "int8":
            require_nncf()  # before training: the fit ends with a calibration
        return check_runtime(self.runtime, self.quantize, resolve_device(self.device),
                             self._engine_precision())

    def _engine_precision(self):
        """The ``precision`` engines are built with: the parameter, except that
        ``"auto"`` under ``runtime="openvino"`` is what the fit's probe chose."""
        if self.runtime == "openvino" and self.precision == "auto":
            return "bf16" if self.__dict__.get("precision_") == "bf16" else "fp32"
        return self.precision

    #: The kinds of call the estimator serves; the first is what the precision probe runs.
    _served_purposes = ("transform",)

    def _settle_engines(self, run, agree):
        """At the end of fit: calibrate int8, then settle ``precision="auto"``.

        ``run(purpose)`` runs the fitted model over some fit samples (at most
        :data:`FIT_PROBE`) for calls of kind ``purpose``.
        """
        for name in ("precision_", "precision_agreement_"):
            self.__dict__.pop(name, None)
        self._calibrate_int8(run, agree)
        self._choose_precision(lambda: run(self._served_purposes[0]), agree)

    def _calibrate_int8(self, run, agree):
        """Under ``runtime="openvino", quantize="int8"``: quantize each served network with NNCF.

        Each purpose's network runs in float32 over the samples ``run``
        gives, its engine recording the inputs; NNCF quantizes it on them.
        The results are ``int8_networks_`` (see
        :mod:`~sktransfer.engine.calibration`): fitted state that pickles and
        model files carry, so that no later engine calibrates again.
        ``int8_agreement_`` is what ``agree(float32 outputs, int8 outputs)``
        measures on the same samples, for the first served purpose.
        """
        for name in ("int8_networks_", "int8_agreement_"):
            self.__dict__.pop(name, None)
        if self.runtime != "openvino" or self.quantize != "int8":
            return
        self.release_engine()
        networks, first = {}, self._served_purposes[0]
        _CALIBRATING.add(self)
        try:
            for purpose in self._served_purposes:
                reference = run(purpose)
                key, snapshots, engine = _held(self).engines[purpose]
                networks[purpose] = engine.calibrate(_calibrated_for(key),
                                                     self._identity(snapshots))
                if purpose == first:
                    measured = agree(reference, run(purpose))[1]
        except BaseException:
            # Interrupted or failed: no float engine left recording, or serving
            # float32 numbers under quantize="int8".
            self.release_engine()
            raise
        finally:
            _CALIBRATING.discard(self)
        self.int8_networks_ = networks
        self.int8_agreement_ = float(measured)

    def _int8_network(self, purpose, key, snapshots):
        """What the OpenVINO engine of ``purpose`` runs as int8: ``"record"`` while
        calibrating, else the network calibrated at fit for the same settings and weights."""
        if self.runtime != "openvino" or self.quantize != "int8":
            return None
        if self in _CALIBRATING:
            return "record"
        record = self.__dict__.get("int8_networks_", {}).get(purpose)
        fix = ("quantize='int8' with runtime='openvino' runs the network NNCF calibrated at "
               "fit")
        if record is None:
            raise ValueError(f"{fix}, and this estimator holds none for this call (fitted "
                             f"with another runtime or quantize): call fit again.")
        if record["settings"] != _calibrated_for(key):
            raise ValueError(f"{fix} for the settings {record['settings']}; this call asks "
                             f"for {_calibrated_for(key)}: call fit again.")
        if record["identity"] != self._identity(snapshots):
            raise ValueError(f"{fix}, and the network changed since (its weights, "
                             f"submodules or attributes): call fit again.")
        return record

    def _identity(self, snapshots):
        """``_network_identity(snapshots)`` (see the class), its refusal worded for int8."""
        try:
            return self._network_identity(snapshots)
        except ValueError as exc:
            raise ValueError(f"quantize='int8' with runtime='openvino' ties its calibrated "
                             f"network to the network's weights and attributes, and one of "
                             f"them has no stable identity: {exc}") from exc

    def _int8_digest(self, purpose):
        """The digest of the int8 network calibrated for ``purpose`` calls, or None.

        None where the engines run no calibrated network (another runtime or
        quantize, or none calibrated). Hashed once per record.
        """
        record = self.__dict__.get("int8_networks_", {}).get(purpose)
        if record is None or self.runtime != "openvino" or self.quantize != "int8":
            return None
        held = _held(self)
        kept = held.int8_digests.get(purpose)
        if kept is None or kept[0] is not record:
            kept = held.int8_digests[purpose] = (record, record_digest(record))
        return kept[1]

    def _choose_precision(self, run, agree):
        """Settle ``precision="auto"`` under ``runtime="openvino"`` (at fit).

        On a CPU with bf16 units, ``run()`` (the fitted model's outputs on
        some fit samples) is computed in float32 and in bf16; bf16 is kept
        only where ``agree(fp32_outputs, bf16_outputs)`` says so. The choice
        is ``precision_`` (``"fp32"`` or ``"bf16"``), the agreement measured
        ``precision_agreement_``. Other settings record nothing.
        """
        if self.runtime != "openvino" or self.precision != "auto":
            return
        from .openvino import cpu_has_bf16

        self.precision_ = "fp32"
        if not cpu_has_bf16():
            return
        reference = run()
        self.precision_ = "bf16"
        agrees, measured = agree(reference, run())
        self.precision_ = "bf16" if agrees else "fp32"
        self.precision_agreement_ = float(measured)

    def _engine_for(self, purpose, sources, network, *, layers=None, output=None, settings=(),
                    resident=True):
        """The engine that runs ``network(*sources)`` for calls of kind ``purpose``.

        Parameters
        ----------
        purpose : str
            The kind of call; each has its own engine.
        sources : tuple of torch.nn.Module
            The fitted modules the network is made of. The engine is rebuilt
            when any of them is replaced or changes: its weights (in place or
            reassigned), submodules, buffers or plain attributes (see
            :class:`~sktransfer.engine.snapshot.ModelSnapshot`).
        network : callable
            ``network(*copies)`` builds the network from the engine's
            private copies of ``sources``. Must not hold the estimator (a
            reference cycle would keep device memory until gc).
        layers, output : see :class:`~sktransfer.engine.module.InferenceModule`
        settings : tuple
            Call settings that the engine bakes in (pooling, ...).
        resident : bool, default=True
            False gives a one-off eager engine that is not kept (predictions
            inside ``fit``, while the weights still change).
        """
        device = resolve_device(self.device)
        if not resident:
            amp_dtype = check_runtime("torch", None, device, self.precision)
            copies = [private_copy(m, device) for m in sources]
            return Engine(InferenceModule(merged_network(network(*copies)), layers, output),
                          device, amp_dtype)
        amp_dtype = check_runtime(self.runtime, self.quantize, device, self._engine_precision())
        key = (device, self.runtime, self.quantize, amp_dtype, tuple(layers or ()),
               tuple(settings))
        engine = self._current_engine(purpose, key, sources)
        if engine is not None:
            return engine
        held = _held(self)
        with held.lock:
            engine = self._current_engine(purpose, key, sources)
            if engine is None:
                snapshots = tuple(held.snapshot(m) for m in sources)
                channels_last = (self.runtime not in ("onnx", "openvino")
                                 and uses_convolutions(sources[0]))
                copies = _resident_copies(held, snapshots, device, channels_last)
                # A tree of its own per engine (sharing the resident tensors),
                # so one engine's layer hooks never fire in another's calls.
                body = private_copy(network(*copies), device, channels_last)
                # Adapters (peft) run merged into the weights, at the plain
                # network's cost; the fitted model keeps them unmerged.
                body = merged_network(body)
                module = InferenceModule(body, layers, output, channels_last=channels_last)
                engine = build_engine(module, device, self.runtime, self.quantize, amp_dtype,
                                      name=_name(self),
                                      int8=self._int8_network(purpose, key, snapshots))
                held.engines[purpose] = (key, snapshots, engine)
        return engine

    def _model_snapshot(self, module):
        """The snapshot of the fitted ``module`` that this estimator's engines are built from.

        Taken anew (and the engines built from the old one dropped) when
        ``module`` changed since. What is computed from it (the feature
        cache's key, from :attr:`ModelSnapshot.module`) describes the
        numbers of every engine built from it.

        Returns
        -------
        ModelSnapshot
        """
        held = _held(self)
        with held.lock:
            return held.snapshot(module)

    def _current_engine(self, purpose, key, sources):
        held = _HELD.get(self)
        entry = None if held is None else held.engines.get(purpose)
        if entry is None:
            return None
        kept_key, snapshots, engine = entry
        if not _still_current(snapshots, sources):
            # Refitted, or the model changed (weights, submodules, attributes):
            # every engine is out of date.
            self.release_engine()
            return None
        return engine if kept_key == key else None

    def __setstate__(self, state):
        # A file written before a parameter existed holds none: it takes its
        # default, which is what that version did (runtime="torch", no prompt,
        # no adaptation...), so get_params, clone and a refit work on it.
        state = dict(state)
        for name, param in inspect.signature(type(self).__init__).parameters.items():
            if name != "self" and param.default is not inspect.Parameter.empty:
                state.setdefault(name, param.default)
        super().__setstate__(state)


def _resident_copies(held, snapshots, device, channels_last):
    """Copies of the ``snapshots``' modules on ``device``, shared by every engine built from them.

    The fine-tuners' transform and predict_proba engines share the
    backbone's copy: calls alternating between them copy nothing. Called
    under ``held.lock``.
    """
    resident = held.resident
    if resident is not None and (resident["device"] != device
                                 or resident["channels_last"] != channels_last):
        # One device copy at a time: the engines built on the old one go.
        held.engines.clear()
        resident = None
    if resident is None:
        resident = held.resident = {"device": device, "channels_last": channels_last,
                                    "modules": []}
    copies = []
    for snapshot in snapshots:
        copy = next((c for s, c in resident["modules"] if s is snapshot), None)
        if copy is None:
            copy = private_copy(snapshot.module, device, channels_last)
            resident["modules"] = [(s, c) for s, c in resident["modules"]
                                   if s.source is not snapshot.source] + [(snapshot, copy)]
        copies.append(copy)
    return copies


def _calibrated_for(key):
    """The call settings of an engine ``key`` that an int8 calibration holds for."""
    layers, settings = key[4], key[5]
    return repr((list(layers), list(settings)))


def _name(estimator):
    backbone = getattr(estimator, "backbone", None)
    return repr(backbone) if isinstance(backbone, str) else type(backbone).__name__


def _still_current(snapshots, sources):
    """Whether ``snapshots`` are of ``sources`` (the same modules), each unchanged since."""
    return len(snapshots) == len(sources) and all(
        s.source is m and s.current() for s, m in zip(snapshots, sources))

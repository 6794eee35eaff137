"""The fitted estimator, sent to each Dask worker once and kept there with its engine.

dask-ml's ``ParallelPostFit`` (and a hand-written ``map_blocks`` that closes
over a model) puts the estimator into every task: the scheduler sends it
with each task and each task deserializes it, so the bytes sent and the
networks rebuilt grow with partitions x model size (dask-ml issue #842).
Here the estimator is pickled once on the client (sktransfer's pickles hold
configs and arrays, no module objects), scattered with ``broadcast=True``
under a key made from a digest of those bytes, and the tasks take the
resulting Future as an argument: the graph carries the key, each worker
deserializes the model once when the scatter reaches it, and every task and
thread of that worker uses the same object, hence the same resident engine
(:mod:`sktransfer.engine.resident`).

Lifetime is Dask's: the workers keep the model while a Future to it lives,
that is while the estimator lives on the client (its Future is remembered
per client) or while a lazy result that needs it does. A worker that joins
later, or replaces a lost one, receives it from a peer when the scheduler
first gives it a task. A worker that is sent a model it holds already (the
same bytes shipped again, by another copy of the estimator) reuses its copy
instead of deserializing a second one.
"""

import collections
import hashlib
import pickle
import sys
import threading
import weakref

from ..engine.resident import engine_purposes

#: The prefix of the Dask keys the models are scattered under.
KEY_PREFIX = "sktransfer-model-"

# Worker side: the models this process holds (by digest, alive while a task
# or the worker's data holds them) and how often each was deserialized here.
_RESIDENT = weakref.WeakValueDictionary()
_LOADS = collections.Counter()
_RESIDENT_LOCK = threading.Lock()

# Client side: estimator -> {client id: (digest, Future)}. Weak, so dropping
# the estimator releases its Futures and the workers free the model.
_SHIPPED = weakref.WeakKeyDictionary()
_SHIPPED_LOCK = threading.Lock()


class ShippedModel:
    """A fitted estimator as the tasks of a lazy call receive it.

    Parameters
    ----------
    estimator : fitted estimator
    digest : str, optional
        A digest of ``payload``; None for a model that stays in this process
        (Dask's local schedulers).
    payload : bytes, optional
        ``estimator`` pickled; sent instead of pickling it again.

    Examples
    --------
    >>> import pickle
    >>> from sklearn.dummy import DummyClassifier
    >>> model = ShippedModel(DummyClassifier())
    >>> type(pickle.loads(pickle.dumps(model)).estimator).__name__
    'DummyClassifier'
    """

    def __init__(self, estimator, digest=None, payload=None):
        self.estimator = estimator
        self.digest = digest
        self._payload = payload

    def __reduce_ex__(self, protocol):
        payload = self._payload
        if payload is None:
            # On a worker, for a peer that needs the model (a replacement
            # worker) or for spilling to disk.
            payload = pickle.dumps(self.estimator, protocol=max(protocol, 5))
        # Protocol 5 passes the bytes out of band, as Dask sends buffers,
        # rather than copying them into the pickle stream.
        return _revive, (self.digest, pickle.PickleBuffer(payload) if protocol >= 5
                         else payload)

    def __dask_tokenize__(self):
        # A digest (or this object's identity) stands for the model: Dask
        # then never hashes the weights to name a task.
        return ("sktransfer-model", self.digest or id(self))


def _revive(digest, payload):
    """A :class:`ShippedModel` from its pickle, reusing this process's copy when it has one."""
    if digest is None:
        return ShippedModel(pickle.loads(payload))
    with _RESIDENT_LOCK:
        # Under the lock: tasks and scatters arriving together deserialize once.
        estimator = _RESIDENT.get(digest)
        if estimator is None:
            estimator = pickle.loads(payload)
            _RESIDENT[digest] = estimator
            _LOADS[digest] += 1
    return ShippedModel(estimator, digest)


def current_client():
    """The Dask client that computes collections by default, or None.

    None when ``distributed`` is not in use, or when a local scheduler
    (``dask.config.set(scheduler="threads")``) overrides the client.
    """
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None
    try:
        client = distributed.default_client()
    except ValueError:
        return None
    import dask.base

    scheduler = dask.base.get_scheduler()
    return client if getattr(scheduler, "__self__", None) is client else None


def ship(estimator, client):
    """What the tasks of a lazy call take as the model: a Future, or the model itself.

    With a ``distributed`` client, the estimator is scattered to every
    worker once per content (its pickle's digest), and the Future is
    reused by later calls until the estimator changes (refit,
    ``set_params``) or is dropped. Without one, Dask's local schedulers run
    the tasks in this process on the estimator itself.
    """
    if client is None:
        return ShippedModel(estimator)
    if client.asynchronous:
        raise TypeError("sktransfer's lazy transform and predict need a synchronous Dask "
                        "client; with an asynchronous one, call them in a thread "
                        "(await asyncio.to_thread(est.transform, X)).")
    # Pickled on every call: a few milliseconds per 10 MB, and the one sure
    # way to notice any change of parameters or weights since the last call.
    payload = pickle.dumps(estimator, protocol=5)
    digest = hashlib.blake2b(payload, digest_size=20).hexdigest()
    with _SHIPPED_LOCK:
        kept = _SHIPPED.setdefault(estimator, {}).get(client.id)
        if kept is not None and kept[0] == digest and kept[1].status == "finished":
            return kept[1]
        key = KEY_PREFIX + digest
        future = client.scatter({key: ShippedModel(estimator, digest, payload)},
                                broadcast=True, hash=False)[key]
        _SHIPPED[estimator][client.id] = (digest, future)
    return future


def worker_models():
    """The models this process holds for Dask tasks, and how often each was deserialized.

    Run it on the workers with ``client.run(sktransfer.scaling.worker_models)``
    to see what each holds: with sktransfer's lazy calls, ``loads`` stays 1
    per model and worker however many tasks and calls used it.

    Returns
    -------
    list of dict
        One per model: ``digest``, ``estimator`` (the class name),
        ``loads`` (times deserialized in this process) and ``engines`` (the
        kinds of call it holds a built inference engine for).

    Examples
    --------
    >>> worker_models()  # this process holds none
    []
    """
    with _RESIDENT_LOCK:
        held = list(_RESIDENT.items())
        loads = dict(_LOADS)
    return [{"digest": digest, "estimator": type(estimator).__name__,
             "loads": loads.get(digest, 0), "engines": engine_purposes(estimator)}
            for digest, estimator in held]

"""The fitted estimator, sent to each Dask worker once and kept there with its engine.

dask-ml's ``ParallelPostFit`` (and a hand-written ``map_blocks`` that closes
over a model) puts the estimator into every task: the scheduler sends it
with each task and each task deserializes it, so the bytes sent and the
networks rebuilt grow with partitions x model size (dask-ml issue #842).
Here the estimator is pickled once on the client (sktransfer's pickles hold
configs and arrays, no module objects) and scattered with
``broadcast=True`` under a key made from a digest of those bytes; each
worker deserializes it once, when the scatter reaches it, and keeps it in a
registry of this module, where every task and thread of the worker finds
the same object, hence the same resident engine
(:mod:`sktransfer.engine.resident`). The tasks carry a :class:`ModelRef`
(the digest and the key, about a hundred bytes), not a Future: a Future
argument would make the model a dependency of every task, and the
scheduler would weigh moving 45 MB to 1 GB against where each task runs.

Why a registry besides Dask's own memory: Dask's active memory manager
drops the extra replicas of data that no task waits for, so between two
calls all workers but one lose the scattered copy, and the next call would
transfer and deserialize the model again. A worker that lacks the model
(it joined later, or replaced a lost one) takes it from the scattered key;
if the only replica was on a worker that died, from a peer that holds it.

A worker keeps a model until the client releases it (the estimator and
every lazy result needing it are gone). Dask's own release frees only the
scattered replicas, not the registry, so the client says so itself: the
Future of each scatter sits in a :class:`_Hold`, held by the estimator and
by the lazy results' :class:`ModelRef`; when the last hold of a model goes,
the client tells every worker to drop it (:func:`_drop`). A worker also
drops models whose keys the scheduler forgot when it fetches one, and
:func:`release_models` frees them all at once.
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

# Worker side: digest -> (key, estimator), and how often each model was
# deserialized in this process. The resident lock guards the dict only (it is
# taken in _revive, which runs where Dask deserializes: never hold it while
# waiting for the network); the fetch lock makes one task fetch at a time.
_RESIDENT = {}
_LOADS = collections.Counter()
_RESIDENT_LOCK = threading.Lock()
_FETCH_LOCK = threading.Lock()

# Client side: estimator -> {client id: (digest, _Hold)}. Weak, so dropping
# the estimator drops its hold; (client id, key) -> the live holds of that key.
_SHIPPED = weakref.WeakKeyDictionary()
_HOLDS = {}
_SHIPPED_LOCK = threading.Lock()


class ShippedModel:
    """A fitted estimator as it travels to the workers (or stays, on a local scheduler).

    Parameters
    ----------
    estimator : fitted estimator
    digest : str, optional
        A digest of ``payload``; None for a model that stays in this process
        (Dask's local schedulers).
    payload : bytes, optional
        ``estimator`` pickled; sent instead of pickling it again.
    key : str, optional
        The Dask key it is scattered under.

    Examples
    --------
    >>> import pickle
    >>> from sklearn.dummy import DummyClassifier
    >>> model = ShippedModel(DummyClassifier())
    >>> type(pickle.loads(pickle.dumps(model)).estimator).__name__
    'DummyClassifier'
    """

    def __init__(self, estimator, digest=None, payload=None, key=None):
        self.estimator = estimator
        self.digest = digest
        self.key = key
        self._payload = payload

    def __reduce_ex__(self, protocol):
        payload = self._payload
        if payload is None:
            # On a worker, for a peer that needs the model (a replacement
            # worker) or for spilling to disk.
            payload = pickle.dumps(self.estimator, protocol=max(protocol, 5))
        # Protocol 5 passes the bytes out of band, as Dask sends buffers,
        # rather than copying them into the pickle stream.
        return _revive, (self.digest, self.key, pickle.PickleBuffer(payload)
                         if protocol >= 5 else payload)

    def __dask_tokenize__(self):
        return ("sktransfer-model", self.digest or id(self))


class _Hold:
    """The client's hold on one scatter of a model: the Future that keeps it on the cluster.

    Held by the estimator (in ``_SHIPPED``) and by the :class:`ModelRef` of
    each lazy result. When it goes and no other hold of the same key is
    left on its client, the workers are told to drop the model.
    """

    def __init__(self, client, digest, future):
        self.future = future
        # Called under _SHIPPED_LOCK (by ship).
        _HOLDS.setdefault((client.id, future.key), weakref.WeakSet()).add(self)
        finalizer = weakref.finalize(self, _unheld, weakref.ref(client), client.id, future.key,
                                     digest)
        finalizer.atexit = False  # at exit the cluster goes anyway


def _unheld(client_ref, client_id, key, digest):
    # A finalizer runs on whichever thread dropped the hold, the client's
    # event loop included, where a blocking call to the client would
    # deadlock, and maybe under _SHIPPED_LOCK: the work is done in a thread.
    threading.Thread(target=_release, args=(client_ref, client_id, key, digest), daemon=True,
                     name="sktransfer-release-model").start()


def _release(client_ref, client_id, key, digest):
    """Tell the workers to drop the model ``digest`` if this client holds its key no more."""
    with _SHIPPED_LOCK:
        holds = _HOLDS.get((client_id, key))
        if holds is not None and any(True for _ in holds):  # iterating skips dead holds
            return  # the same model, shipped again (refit to the same weights, a copy)
        _HOLDS.pop((client_id, key), None)
    client = client_ref()
    if client is None or client.status != "running":
        return  # closed: its workers are not ours to tidy
    try:
        client.run(_drop, digest)  # in this thread of its own: waiting costs no one
    except Exception:  # noqa: BLE001 - the client closed meanwhile: nothing left to free
        pass


def _drop(digest):
    """Forget the model ``digest`` on this worker (its client holds it no more)."""
    with _RESIDENT_LOCK:
        _RESIDENT.pop(digest, None)
        _LOADS.pop(digest, None)


class ModelRef:
    """What a task carries of the model: its digest and key, never its weights.

    On a worker, :attr:`estimator` is the worker's one copy. On the client,
    the object also holds the :class:`_Hold` of the scattered model, so that
    the model stays on the cluster while a lazy result that needs it lives.
    """

    def __init__(self, digest, key, hold=None):
        self.digest = digest
        self.key = key
        self._hold = hold

    def __reduce__(self):
        return ModelRef, (self.digest, self.key)

    def __dask_tokenize__(self):
        return ("sktransfer-model", self.digest)

    @property
    def estimator(self):
        return resident_model(self.digest, self.key)


def _revive(digest, key, payload):
    """A :class:`ShippedModel` from its pickle, reusing this process's copy when it has one.

    ``payload`` is the user's own fitted estimator, pickled by their client a
    moment before and sent over their cluster (what Dask does with every task
    it runs): nothing sktransfer stored is unpickled here. The estimator's
    pickle itself holds specs and arrays, never a pickled module object.
    """
    if digest is None:
        return ShippedModel(pickle.loads(payload))
    with _RESIDENT_LOCK:
        # Under the lock: tasks and scatters arriving together deserialize once.
        entry = _RESIDENT.get(digest)
        if entry is None:
            entry = _RESIDENT[digest] = (key, pickle.loads(payload))
            _LOADS[digest] += 1
    return ShippedModel(entry[1], digest, key=key)


def resident_model(digest, key):
    """This worker's copy of the model ``digest``, fetched once if it has none yet."""
    entry = _RESIDENT.get(digest)
    if entry is not None:
        return entry[1]
    with _FETCH_LOCK:
        if digest not in _RESIDENT:
            _fetch(digest, key)
            _forget_released(keep=digest)
        return _RESIDENT[digest][1]


def _fetch(digest, key):
    """Take the model from the scattered key, or else from a peer's registry."""
    import distributed

    client = distributed.get_client()
    if client.who_has([key]).get(key):
        # Received through _revive, which registers it.
        distributed.Future(key, client).result()
        if digest in _RESIDENT:
            return
    # The last replica was on a worker that died; the workers that ran tasks
    # of this model still hold it.
    payloads = client.run(_pickled, digest)
    payload = next((p for p in payloads.values() if p is not None), None)
    if payload is None:
        raise RuntimeError(f"the model {key} is no longer on the Dask cluster (every worker "
                           f"that held it is gone); call transform or predict again to "
                           f"send it anew.")
    _revive(digest, key, payload)


def _pickled(digest):
    entry = _RESIDENT.get(digest)
    return None if entry is None else pickle.dumps(entry[1], protocol=5)


def _forget_released(keep):
    """Drop the models whose keys the client has released (the scheduler forgot them)."""
    import distributed

    with _RESIDENT_LOCK:
        others = {entry[0]: d for d, entry in _RESIDENT.items() if d != keep}
    if not others:
        return
    known = distributed.get_client().who_has(list(others))
    with _RESIDENT_LOCK:
        for key, digest in others.items():
            if not known.get(key):
                _RESIDENT.pop(digest, None)


def release_models():
    """Free every model this process holds for Dask tasks (run it on the workers).

    ``client.run(sktransfer.scaling.release_models)`` gives their memory
    back at once (device memory included); a later task that needs a model
    takes it from the cluster again.

    Returns
    -------
    int
        The number of models released.

    Examples
    --------
    >>> release_models()
    0
    """
    with _RESIDENT_LOCK:
        n = len(_RESIDENT)
        _RESIDENT.clear()
    return n


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
    """What the tasks of a lazy call take as the model: a :class:`ModelRef`, or the model.

    With a ``distributed`` client, the estimator is scattered to every
    worker once per content (its pickle's digest), and its Future is
    reused by later calls until the estimator changes (refit,
    ``set_params``) or is dropped; then, once no lazy result needs the
    model either, the workers drop it too. Without one, Dask's local
    schedulers run the tasks in this process on the estimator itself.
    """
    if client is None:
        return ShippedModel(estimator)
    if client.asynchronous:
        raise TypeError("sktransfer's lazy transform and predict need a synchronous Dask "
                        "client; with an asynchronous one, call them in a thread "
                        "(await asyncio.to_thread(est.transform, X)).")
    # Pickled on every call (its cost: benchmarks/RESULTS.md, "Dask"): the one
    # sure way to notice any change of parameters or weights since the last call.
    payload = pickle.dumps(estimator, protocol=5)
    digest = hashlib.blake2b(payload, digest_size=20).hexdigest()
    with _SHIPPED_LOCK:
        kept = _SHIPPED.setdefault(estimator, {}).get(client.id)
        key = KEY_PREFIX + digest
        if kept is None or kept[0] != digest or kept[1].future.status != "finished":
            future = client.scatter({key: ShippedModel(estimator, digest, payload, key)},
                                    broadcast=True, hash=False)[key]
            # Replacing the hold of an earlier content lets that model go.
            kept = _SHIPPED[estimator][client.id] = (digest, _Hold(client, digest, future))
    return ModelRef(digest, key, kept[1])


def worker_models():
    """The models this process holds for Dask tasks, and how often each was deserialized.

    Run it on the workers with ``client.run(sktransfer.scaling.worker_models)``
    to see what each holds: with sktransfer's lazy calls, ``loads`` stays 1
    per model and worker however many tasks and calls used it.

    Returns
    -------
    list of dict
        One per model: ``digest``, ``estimator`` (the class name),
        ``loads`` (times deserialized in this process) and
        ``engines`` (the kinds of call it holds a built inference engine
        for).

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
            for digest, (_, estimator) in held]

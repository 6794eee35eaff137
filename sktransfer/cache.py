"""The feature cache: embeddings stored on disk per sample content.

A frozen backbone gives the same embedding for the same sample every time,
so a search over the model placed after it (``GridSearchCV`` over an SVC's
``C``) needs each distinct sample embedded once. Cross-validation slices
``X`` differently for every fold, so a key on the whole of ``X`` would miss;
here every sample is keyed by a digest of its own content, and a call looks
all of its samples up at once and embeds only those not found.

Layout, inside a :class:`joblib.Memory` store::

    <store>/sktransfer-features/<output key>/<chunk id>/output.pkl

The output key is a hash of everything that changes an embedding (the
backbone's spec and weights by content, layers, pooling, preprocessing,
precision). Each chunk holds the samples embedded by one call: their digests,
their features and a checksum over both. Chunks are written through joblib's
store backend (to a temporary file, then renamed), so two processes writing
the same chunk never leave a torn file, and a chunk that fails to load or
whose checksum does not match is deleted and its samples embedded again.
Chunk directories are named like joblib's own items, so
``memory.reduce_size()`` and ``memory.clear()`` manage them too.
"""

import hashlib
import os
import threading

import joblib
import numpy as np
from joblib._store_backends import FileSystemStoreBackend

from ._weights_cache import weights_digest

#: Directory under the joblib store that holds the feature cache.
NAMESPACE = "sktransfer-features"
#: Changes whenever the stored layout or the key's meaning changes, so an old
#: cache is never read with new rules.
FORMAT = 1
_DIGEST_SIZE = 16
_READ_BLOCK = 1 << 20

_LOCK = threading.Lock()
_INDEXES = {}


class FeatureCache:
    """Embeddings kept per sample content in a :class:`joblib.Memory` store.

    Parameters
    ----------
    cache : str, os.PathLike or joblib.Memory
        A directory (a ``joblib.Memory`` is made on it) or a memory whose
        location, compression and ``mmap_mode`` are used. A memory with
        ``location=None`` disables caching, as it does for joblib.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from sktransfer.inputs import as_samples
    >>> calls = []
    >>> def embed(samples):
    ...     calls.append(len(samples))
    ...     return samples.data.sum(axis=1, keepdims=True).astype(np.float32)
    >>> cache = FeatureCache(tempfile.mkdtemp())
    >>> X = np.arange(12.0).reshape(6, 2)
    >>> cache.embed(as_samples(X[:4], "tensor"), "some-output-key", embed).ravel()
    array([ 1.,  5.,  9., 13.], dtype=float32)
    >>> cache.embed(as_samples(X[2:], "tensor"), "some-output-key", embed).ravel()
    array([ 9., 13., 17., 21.], dtype=float32)
    >>> calls  # the second call embedded only the two samples not seen before
    [4, 2]
    """

    def __init__(self, cache):
        if isinstance(cache, joblib.Memory):
            memory = cache
        elif isinstance(cache, (str, os.PathLike)):
            memory = joblib.Memory(os.path.expanduser(os.fspath(cache)), verbose=0)
        else:
            raise TypeError(
                f"cache must be None, a directory path or a joblib.Memory; got a "
                f"{type(cache).__name__}: {cache!r:.80}"
            )
        store = memory.store_backend
        if store is not None and not isinstance(store, FileSystemStoreBackend):
            raise ValueError(
                f"the feature cache needs a joblib.Memory on a file system; this one "
                f"uses {type(store).__name__}"
            )
        self.memory = memory
        self.store = store

    def embed(self, samples, key, compute):
        """Embeddings of ``samples``, computing only those not stored yet.

        Parameters
        ----------
        samples : Samples
            From :func:`sktransfer.inputs.as_samples`.
        key : str
            Identifies the computation (see :func:`output_key`).
        compute : callable
            ``compute(samples) -> ndarray (n, d)`` for a subset of samples.

        Returns
        -------
        ndarray of shape (n_samples, d), float32
        """
        if self.store is None:
            return compute(samples)
        digests = sample_digests(samples)
        index = self._index(key)
        loaded = index.refresh(self.store)
        out, missing = index.fetch(self.store, digests, loaded)
        if missing:
            # Each distinct sample once, however often it repeats in X.
            first = {}
            for i in missing:
                first.setdefault(digests[i], i)
            todo = list(first.values())
            features = np.asarray(compute(samples.subset(todo)), dtype=np.float32)
            if features.ndim != 2 or features.shape[0] != len(todo):
                raise ValueError(f"the embedding of {len(todo)} samples has shape "
                                 f"{features.shape}; expected ({len(todo)}, n_features)")
            index.store(self.store, [digests[i] for i in todo], features)
            if out is None:
                out = np.empty((len(samples), features.shape[1]), dtype=np.float32)
            row = {d: r for r, d in enumerate(first)}
            out[missing] = features[[row[digests[i]] for i in missing]]
        return out

    def _index(self, key):
        with _LOCK:
            return _INDEXES.setdefault((self.store.location, key), _ChunkIndex(key))


class _ChunkIndex:
    """Which chunk holds which sample digest, for one output key, in this process.

    Chunk files never change once written, so what was read from one stays
    true; each lookup only lists the key's directory to pick up chunks that
    other processes wrote, and reads those.
    """

    def __init__(self, key):
        self.key = key
        self.where = {}  # sample digest -> (chunk id, row)
        self.chunks = {}  # chunk id -> digests it holds
        self.lock = threading.Lock()

    def refresh(self, store):
        """Index chunks written since the last look; return those just read."""
        directory = os.path.join(store.location, NAMESPACE, self.key)
        try:
            present = set(os.listdir(directory))
        except FileNotFoundError:
            present = set()
        with self.lock:
            for gone in set(self.chunks) - present:
                self._forget(gone)
            new = present - set(self.chunks)
        loaded = {}
        for chunk in new:
            if not store.contains_item(self._call_id(chunk)):
                continue  # a directory whose file is still being written
            item = self._load(store, chunk)
            if item is not None:
                loaded[chunk] = item["features"]
                self._add(chunk, [d.tobytes() for d in item["digests"]])
        return loaded

    def fetch(self, store, digests, loaded):
        """Stored rows for ``digests``, and the positions not found."""
        with self.lock:
            located = [self.where.get(d) for d in digests]
        by_chunk = {}
        for i, place in enumerate(located):
            if place is not None:
                by_chunk.setdefault(place[0], []).append((i, place[1]))
        out, missing = None, [i for i, place in enumerate(located) if place is None]
        for chunk, wanted in by_chunk.items():
            features = loaded.get(chunk)
            if features is None:
                item = self._load(store, chunk)
                features = None if item is None else item["features"]
            if features is None:
                missing.extend(i for i, _ in wanted)
                continue
            if out is None:
                out = np.empty((len(digests), features.shape[1]), dtype=np.float32)
            if features.shape[1] != out.shape[1]:
                self._discard(store, chunk)
                missing.extend(i for i, _ in wanted)
                continue
            positions, rows = map(list, zip(*wanted))
            out[positions] = features[rows]
        return out, sorted(missing)

    def store(self, store, digests, features):
        keys = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, _DIGEST_SIZE)
        features = np.ascontiguousarray(features, dtype=np.float32)
        # Named by its content: two workers embedding the same samples write
        # the same chunk, and the second rename replaces identical bytes.
        chunk = hashlib.blake2b(keys.tobytes(), digest_size=16).hexdigest()
        item = {"format": FORMAT, "digests": keys, "features": features,
                "checksum": _checksum(keys, features)}
        store.dump_item(self._call_id(chunk), item, verbose=0)
        self._add(chunk, digests)

    def _add(self, chunk, digests):
        with self.lock:
            self.chunks[chunk] = digests
            for row, digest in enumerate(digests):
                self.where[digest] = (chunk, row)

    def _forget(self, chunk):
        for digest in self.chunks.pop(chunk, ()):
            if self.where.get(digest, (None,))[0] == chunk:
                del self.where[digest]

    def _discard(self, store, chunk):
        with self.lock:
            self._forget(chunk)
        store.clear_item(self._call_id(chunk))

    def _call_id(self, chunk):
        return [NAMESPACE, self.key, chunk]

    def _load(self, store, chunk):
        """The chunk's item if it loads and checks out; else delete it, None."""
        try:
            item = store.load_item(self._call_id(chunk), verbose=0)
        except KeyError:
            # Gone since it was listed (cleared, or dropped by reduce_size).
            with self.lock:
                self._forget(chunk)
            return None
        except Exception:  # noqa: BLE001 - any unreadable entry is recomputed
            item = None
        if item is None or not _is_sound(item):
            self._discard(store, chunk)
            return None
        return item


def _is_sound(item):
    """Whether a loaded chunk has the expected layout and an intact checksum."""
    try:
        digests, features = item["digests"], item["features"]
        return (item["format"] == FORMAT and digests.ndim == 2
                and digests.shape[1] == _DIGEST_SIZE and features.ndim == 2
                and features.dtype == np.float32 and len(features) == len(digests)
                and item["checksum"] == _checksum(digests, features))
    except (KeyError, TypeError, AttributeError, ValueError):
        return False


def _checksum(digests, features):
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(digests))
    h.update(np.ascontiguousarray(features))
    return h.hexdigest()


def output_key(backbone, *, layers, pooling, precision):
    """Hash of everything that changes the embeddings a backbone gives.

    Parameters
    ----------
    backbone : Backbone
        Its spec, modality, preprocessing constants and weights (by content,
        through :func:`~sktransfer._weights_cache.weights_digest`) enter the key.
    layers : list of str or None
    pooling : str
    precision : torch.dtype or None
        The autocast dtype actually used (``None`` for fp32).

    Returns
    -------
    str

    Examples
    --------
    >>> from torch import nn
    >>> from sktransfer.backbones import load_backbone
    >>> bb = load_backbone(nn.Linear(3, 2))
    >>> a = output_key(bb, layers=None, pooling="avg", precision=None)
    >>> b = output_key(bb, layers=None, pooling="max", precision=None)
    >>> a == output_key(bb, layers=None, pooling="avg", precision=None), a == b
    (True, False)
    """
    preprocess = backbone.preprocess
    config = preprocess.config() if hasattr(preprocess, "config") else preprocess
    return joblib.hash({
        "format": FORMAT,
        "spec": backbone.spec,
        "modality": backbone.modality,
        "weights": weights_digest(backbone.module),
        "preprocess": (type(preprocess).__name__, config),
        "layers": None if layers is None else list(layers),
        "pooling": pooling,
        "precision": str(precision),
    })


def sample_digests(samples):
    """One 16-byte digest per sample, by content.

    Arrays are hashed row by row with their dtype, layout and shape; file
    paths by the bytes of the file (a file rewritten in place gets a new
    digest; two copies of one file share it); PIL images by mode, size,
    palette and pixels; strings by their UTF-8 bytes.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer.inputs import as_samples
    >>> d = sample_digests(as_samples(np.array([[1, 2], [3, 4], [1, 2]]), "tensor"))
    >>> len(d[0]), d[0] == d[2], d[0] == d[1]
    (16, True, False)
    """
    kind, data = samples.kind, samples.data
    if kind in ("nchw", "nhwc", "tensor"):
        array = np.asarray(data)
        prefix = f"{kind}\0{array.dtype.str}\0{array.shape[1:]}\0".encode()
        return [_digest(prefix, np.ascontiguousarray(row)) for row in array]
    if kind == "text":
        return [_digest(b"text\0", s.encode("utf-8", "surrogatepass")) for s in data]
    if kind == "paths":
        return [_file_digest(path) for path in data]
    if kind == "pil":
        return [_image_digest(img) for img in data]
    raise ValueError(f"cannot cache samples of kind {kind!r}")


def _digest(prefix, payload):
    h = hashlib.blake2b(prefix, digest_size=_DIGEST_SIZE)
    h.update(payload)
    return h.digest()


def _file_digest(path):
    # Decoded images depend on the bytes only, so the bytes are the key.
    h = hashlib.blake2b(b"image\0", digest_size=_DIGEST_SIZE)
    with open(path, "rb") as fh:
        while block := fh.read(_READ_BLOCK):
            h.update(block)
    return h.digest()


def _image_digest(img):
    palette = img.getpalette() if img.mode in ("P", "PA") else None
    h = hashlib.blake2b(f"pil\0{img.mode}\0{img.size}\0{palette}\0".encode(),
                        digest_size=_DIGEST_SIZE)
    h.update(img.tobytes())
    return h.digest()

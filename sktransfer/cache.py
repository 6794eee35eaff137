"""The feature cache: embeddings stored on disk per sample content.

A frozen backbone gives the same embedding for the same sample every time,
so a search over the model placed after it (``GridSearchCV`` over an SVC's
``C``) needs each distinct sample embedded once. Cross-validation slices
``X`` differently for every fold, so a key on the whole of ``X`` would miss;
here every sample is keyed by a digest of its own content, and a call looks
all of its samples up at once and embeds only those not found.

Layout, under the cache directory (a ``joblib.Memory``'s store)::

    <root>/sktransfer-features/<output key>/<chunk id>/features.safetensors
    <root>/sktransfer-features/<output key>/.tmp-<chunk id>-<random>   (being written)

The output key is a hash of everything that changes an embedding (the
backbone's spec, architecture and code, weights by content, layers, pooling,
preprocessing, precision). Each chunk holds one block of samples embedded
together: a safetensors file with their digests (uint8, ``(n, 16)``) and
features (float32, ``(n, d)``), and the format, output key and a checksum of
each tensor in its metadata. Safetensors holds arrays only, so reading an
entry never runs code, and every checksum is verified before a value is used;
an entry that fails is deleted and its samples embedded again.

Writes go to a temporary file beside the chunk directories, are flushed to
disk, then renamed into place, so readers never see a torn file; a write that
fails (full disk, read-only directory) removes its temporary file, warns, and
the call still returns correct results. Temporary files of killed writers are
ignored and removed once they are old. Chunk directories are named like
joblib's own items, so ``memory.reduce_size()`` and ``memory.clear()`` manage
them too.

A process keeps, per output key, an index of which chunk holds which digest,
read from the digests tensors alone: numpy arrays of 24 bytes per sample (the
digests sorted, each one's chunk and row), searched for a block of samples
at once; a lookup reads features only from the chunks that hold its hits.
"""

import contextlib
import hashlib
import inspect
import os
import threading
import time
import uuid
import warnings
import weakref
from typing import NamedTuple

import joblib
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save as save_tensors

from ._weights_cache import weights_digest
from .inputs import DECODING, Samples

#: Directory under the joblib store that holds the feature cache.
NAMESPACE = "sktransfer-features"
#: Changes whenever the stored layout or the key's meaning changes, so an old
#: cache is never read with new rules.
FORMAT = 2
#: Samples embedded and stored together: what an interrupted call keeps, and
#: (for image files) how many files' bytes are held in memory at once.
BLOCK_SIZE = 512
#: Seconds after which a temporary file is taken to be a killed writer's.
STALE_AFTER = 3600.0
_FILE = "features.safetensors"
_TMP_PREFIX = ".tmp-"
_DIGEST_SIZE = 16
_READ_BLOCK = 1 << 20

_LOCK = threading.Lock()
_INDEXES = {}


class FeatureCache:
    """Embeddings kept per sample content in a directory.

    Parameters
    ----------
    cache : str, os.PathLike or joblib.Memory
        A directory, or a memory whose store directory is used (its
        ``compress`` and ``mmap_mode`` are not). A memory with
        ``location=None`` disables caching, as it does for joblib.
    block_size : int, default=BLOCK_SIZE
        Samples embedded and stored together. ``compute`` is called once per
        block of samples not found; a call interrupted in the middle keeps
        the blocks it finished.

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

    def __init__(self, cache, *, block_size=BLOCK_SIZE):
        self.root = _root(cache)
        self.block_size = block_size

    def embed(self, samples, key, compute):
        """Embeddings of ``samples``, computing only those not stored yet.

        Parameters
        ----------
        samples : Samples
            From :func:`sktransfer.inputs.as_samples`.
        key : str
            Identifies the computation (see :func:`output_key`).
        compute : callable
            ``compute(samples) -> ndarray (n, d)`` for a subset of samples;
            called once per block of samples not found. Image files are
            given as their bytes (kind ``"encoded"``), the very bytes whose
            digest keys the result.

        Returns
        -------
        ndarray of shape (n_samples, d), float32
        """
        if self.root is None:
            return compute(samples)
        index = _index(os.path.join(self.root, NAMESPACE), key)
        index.refresh()
        run = _Run(samples, index, compute, self.block_size)
        hits = run.scan(range(len(samples)))
        failed = index.fetch(hits, run.out)
        if failed:
            # Chunks that went bad or vanished since they were indexed: those
            # samples are embedded again, without another lookup.
            run.scan(failed, lookup=False)
        return run.finish()


def _root(cache):
    """The directory a ``cache`` argument names, or None for no cache."""
    if isinstance(cache, joblib.Memory):
        # Inside the memory's own store, so that memory.clear() and
        # memory.reduce_size() manage the entries too.
        return getattr(cache.store_backend, "location", None)
    if isinstance(cache, (str, os.PathLike)):
        # Where joblib.Memory(cache) would keep its store: a directory and a
        # memory on it share entries.
        return os.path.join(os.path.expanduser(os.fspath(cache)), "joblib")
    raise TypeError(
        f"cache must be None, a directory path or a joblib.Memory; got a "
        f"{type(cache).__name__}: {cache!r:.80}"
    )


def _index(directory, key):
    with _LOCK:
        return _INDEXES.setdefault((directory, key), _ChunkIndex(directory, key))


class _Run:
    """One ``embed`` call: walk the samples a block at a time, compute the misses.

    Misses are gathered (each distinct digest once) and embedded and stored
    ``block_size`` at a time, so memory stays bounded and an interrupt keeps
    every finished block. Hits are only noted here and read afterwards,
    chunk by chunk, so each chunk is read once per call.
    """

    def __init__(self, samples, index, compute, block_size):
        self.samples = samples
        self.index = index
        self.compute = compute
        self.block_size = block_size
        self.out = _Output(len(samples))
        self.pending = {}  # digest -> (payload, [positions])
        self.computed = {}  # digest -> a position already filled this call
        self.copies = []  # (position, position it equals)
        self.write_failed = False

    def scan(self, positions, *, lookup=True):
        """Fill or schedule ``positions``; return the hits.

        Returns
        -------
        list of (position, chunk number, row)
        """
        positions = list(positions)
        hits = []
        for start in range(0, len(positions), self.block_size):
            block = positions[start:start + self.block_size]
            digests, payloads = _block_contents(self.samples, block)
            # The whole block is looked up at once; a chunk number of -1 is a miss.
            numbers, rows = self.index.locate(digests) if lookup else (None, None)
            for i, (position, digest, payload) in enumerate(zip(block, digests, payloads)):
                if digest in self.computed:
                    self.copies.append((position, self.computed[digest]))
                elif digest in self.pending:
                    self.pending[digest][1].append(position)
                elif lookup and numbers[i] >= 0:
                    hits.append((position, int(numbers[i]), int(rows[i])))
                else:
                    self.pending[digest] = (payload, [position])
                    if len(self.pending) >= self.block_size:
                        self._flush()
        self._flush()
        return hits

    def finish(self):
        for position, source in self.copies:
            self.out.array[position] = self.out.array[source]
        return self.out.array

    def _flush(self):
        if not self.pending:
            return
        digests = list(self.pending)
        entries = [self.pending[d] for d in digests]
        if self.samples.kind == "paths":
            todo = Samples([payload for payload, _ in entries], "encoded")
        else:
            todo = self.samples.subset([positions[0] for _, positions in entries])
        features = np.asarray(self.compute(todo), dtype=np.float32)
        if features.ndim != 2 or features.shape[0] != len(digests):
            raise ValueError(f"the embedding of {len(digests)} samples has shape "
                             f"{features.shape}; expected ({len(digests)}, n_features)")
        self.pending = {}
        for digest, (_, positions), row in zip(digests, entries, features):
            self.out.put(positions, row)
            self.computed[digest] = positions[0]
        self._store(digests, features)

    def _store(self, digests, features):
        if self.write_failed:
            return  # one warning per call; the disk will not be better now
        try:
            self.index.store(digests, features)
        except OSError as exc:
            self.write_failed = True
            warnings.warn(f"the feature cache could not be written ({exc}); embeddings are "
                          f"computed but not stored", UserWarning, stacklevel=4)


class _Output:
    """The result array, allocated once the width of the features is known."""

    def __init__(self, n):
        self.n = n
        self.array = None

    def put(self, positions, rows):
        rows = np.asarray(rows, dtype=np.float32)
        if self.array is None:
            self.array = np.empty((self.n, rows.shape[-1]), dtype=np.float32)
        self.array[positions] = rows


class _ChunkIndex:
    """Which chunk holds which sample digest, for one output key, in this process.

    Chunk files never change once written (a rewrite by another process has
    the same digests in the same rows), so what was read from one stays true;
    each lookup only lists the key's directory to pick up chunks that other
    processes wrote, and reads the digests of those.

    The index is three parallel numpy arrays sorted by digest (``sorted``):
    the digests (``V16``, compared as bytes), the number of the chunk that
    holds each and its row there, 24 bytes a sample (a dict of digests to
    tuples took about 220), and one small record per chunk. The triple is
    replaced whole, never changed in place, so a lookup can search it without
    the lock. Chunks that this process writes wait in ``pending`` until the
    next ``refresh``: a call never needs its own chunks (it remembers what it
    computed), and merging once per call rather than once per stored block
    keeps a long transform from copying the index after every block.
    """

    def __init__(self, directory, key):
        self.directory = os.path.join(directory, key)
        self.key = key
        self.chunks = {}  # chunk id -> _Chunk
        self.names = {}  # chunk number -> chunk id
        self.pending = []  # (chunk number, digests (n, 16) uint8), not merged yet
        self.sorted = _EMPTY_INDEX  # (digests, chunk numbers, rows), by digest
        self.next_number = 0
        self.lock = threading.Lock()

    def refresh(self):
        """Index the chunks written since the last look, and forget removed ones."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            names = []
        present = {n for n in names if not n.startswith(_TMP_PREFIX)}
        with self.lock:
            self._forget(set(self.chunks) - present)
            new = present - set(self.chunks)
        for chunk in new:
            self._add_from_disk(chunk)
        with self.lock:
            self._merge()
        _remove_stale(self.directory, [n for n in names if n.startswith(_TMP_PREFIX)])

    def locate(self, digests):
        """Where ``digests`` (16-byte strings) are stored, all found at once.

        Returns
        -------
        numbers : ndarray of int32
            The chunk number of each digest, -1 for one not stored.
        rows : ndarray of int32
            Its row in that chunk (meaningless where ``numbers`` is -1).
        """
        query = np.frombuffer(b"".join(digests), dtype=_KEY)
        keys, numbers, rows = self.sorted
        if not len(keys):
            return np.full(len(query), -1, np.int32), np.zeros(len(query), np.int32)
        at = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
        return np.where(keys[at] == query, numbers[at], -1), rows[at]

    def fetch(self, hits, out):
        """Copy stored rows into ``out``; return the positions that failed.

        ``hits`` holds ``(position, chunk number, row)`` triples; each chunk
        is read once, for all of its rows.
        """
        if not hits:
            return []
        positions, numbers, rows = (np.asarray(column) for column in zip(*hits))
        order = np.argsort(numbers, kind="stable")
        positions, numbers, rows = positions[order], numbers[order], rows[order]
        starts = np.flatnonzero(np.diff(numbers)) + 1
        failed = []
        for number, wanted, chunk_rows in zip(numbers[np.r_[0, starts]],
                                              np.split(positions, starts),
                                              np.split(rows, starts)):
            with self.lock:
                chunk = self.names.get(int(number))  # None: forgotten meanwhile
            features = None if chunk is None else self._read(chunk, chunk_rows)
            if features is None or (out.array is not None
                                    and features.shape[1] != out.array.shape[1]):
                failed.extend(wanted.tolist())
                continue
            out.put(wanted, features)
        return sorted(failed)

    def store(self, digests, features):
        """Write one chunk; raises OSError when it cannot be written."""
        keys = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, _DIGEST_SIZE)
        features = np.ascontiguousarray(features, dtype=np.float32)
        # Named by its content: two workers embedding the same samples write
        # the same chunk, and the second rename replaces equivalent bytes.
        chunk = hashlib.blake2b(keys.tobytes(), digest_size=16).hexdigest()
        # One checksum per row, so that a lookup can verify the rows it reads
        # without reading the whole chunk.
        row_sums = _row_checksums(features)
        metadata = {"format": str(FORMAT), "key": self.key,
                    "digests_blake2b": _checksum(keys), "rows_blake2b": _checksum(row_sums)}
        data = save_tensors({"digests": keys, "features": features, "row_blake2b": row_sums},
                            metadata=metadata)
        os.makedirs(self.directory, exist_ok=True)
        temporary = os.path.join(self.directory, f"{_TMP_PREFIX}{chunk}-{uuid.uuid4().hex}")
        _write_atomically(data, temporary, self._path(chunk))
        self._add(chunk, keys, metadata["digests_blake2b"])

    def _path(self, chunk):
        return os.path.join(self.directory, chunk, _FILE)

    def _add_from_disk(self, chunk):
        try:
            keys, digests_checksum = _read_digests(self._path(chunk), self.key)
        except FileNotFoundError:
            return  # a directory whose file is not written yet, or just removed
        except Exception:  # noqa: BLE001 - any unreadable entry is recomputed
            self._discard(chunk)
            return
        self._add(chunk, keys, digests_checksum)

    def _read(self, chunk, rows):
        """The chunk's ``rows`` if they read and check out; else None (and delete it)."""
        with self.lock:
            known = self.chunks.get(chunk)
        if known is None:
            return None
        try:
            features = _read_rows(self._path(chunk), self.key, known.digests_checksum, rows)
        except FileNotFoundError:
            # Gone since it was listed (cleared, or dropped by reduce_size).
            with self.lock:
                self._forget([chunk])
            return None
        except Exception:  # noqa: BLE001 - any unreadable entry is recomputed
            self._discard(chunk)
            return None
        return features

    def _add(self, chunk, keys, digests_checksum):
        with self.lock:
            if chunk in self.chunks:
                return  # named by content: the same digests in the same rows
            number = self.next_number
            self.next_number += 1
            self.chunks[chunk] = _Chunk(number, digests_checksum)
            self.names[number] = chunk
            self.pending.append((number, np.ascontiguousarray(keys, dtype=np.uint8)))

    def _merge(self):
        """Merge the pending chunks into the sorted arrays (the lock held).

        The new digests are sorted, then inserted where ``searchsorted`` puts
        them: linear in the index, not a sort of all of it. Intermediates are
        dropped as soon as they are used, since a fresh process merges every
        stored digest at once.
        """
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        lengths = [len(keys) for _, keys in pending]
        numbers = np.repeat(np.array([number for number, _ in pending], np.int32), lengths)
        rows = np.concatenate([np.arange(length, dtype=np.int32) for length in lengths])
        keys = np.concatenate([keys for _, keys in pending])
        del pending
        order = _bytewise_order(keys)
        keys = keys.view(_KEY).ravel()[order]
        numbers, rows = numbers[order], rows[order]
        del order
        if len(self.sorted[0]):
            at = np.searchsorted(self.sorted[0], keys)
            keys, numbers, rows = (np.insert(old, at, new)
                                   for old, new in zip(self.sorted, (keys, numbers, rows)))
        self.sorted = (keys, numbers, rows)

    def _forget(self, chunks):
        """Drop ``chunks`` (ids) from the index (the lock held)."""
        numbers = [self.chunks.pop(chunk).number for chunk in chunks if chunk in self.chunks]
        if not numbers:
            return
        for number in numbers:
            del self.names[number]
        gone = set(numbers)
        self.pending = [(number, keys) for number, keys in self.pending if number not in gone]
        keys, chunk_numbers, rows = self.sorted
        keep = ~np.isin(chunk_numbers, numbers)
        if not keep.all():
            self.sorted = (keys[keep], chunk_numbers[keep], rows[keep])

    def _discard(self, chunk):
        with self.lock:
            self._forget([chunk])
        with contextlib.suppress(OSError):
            os.remove(self._path(chunk))
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(self.directory, chunk))


class _Chunk(NamedTuple):
    """What the index keeps of one chunk besides its rows in the sorted arrays."""

    number: int  # its number in the index's arrays
    digests_checksum: str  # of its digests tensor, as indexed


#: A digest as one numpy scalar: void scalars compare as bytes (memcmp), so
#: an array of them sorts and ``searchsorted`` works on it.
_KEY = np.dtype(f"V{_DIGEST_SIZE}")
_EMPTY_INDEX = (np.empty(0, _KEY), np.empty(0, np.int32), np.empty(0, np.int32))


def _bytewise_order(keys):
    """The order that sorts ``(n, 16)`` uint8 digests as byte strings.

    Digests are uniformly random, so their first 8 bytes, read as a
    big-endian integer (whose order is the bytes' order), tell them apart
    and sort a few times faster than 16-byte strings; only when two share
    them (the same digest stored in two chunks) is the second half used too.
    """
    words = keys.view(">u8")
    first = words[:, 0].astype(np.uint64)
    order = np.argsort(first, kind="stable")
    ordered = first[order]
    if np.any(ordered[1:] == ordered[:-1]):
        order = np.lexsort((words[:, 1].astype(np.uint64), first))
    return order


def _write_atomically(data, temporary, path):
    """Write ``data`` to ``path`` through ``temporary``; on any failure remove it.

    The bytes reach the disk (fsync) before the rename, so the name never
    points at a file that a crash could leave short; ``os.replace`` is atomic
    on local file systems and on NFS.
    """
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def _remove_stale(directory, temporaries):
    """Delete temporary files left by writers killed over STALE_AFTER ago."""
    limit = time.time() - STALE_AFTER
    for name in temporaries:
        path = os.path.join(directory, name)
        with contextlib.suppress(OSError):
            if os.stat(path).st_mtime < limit:
                os.remove(path)


def _read_digests(path, key):
    """The digests of a chunk and their checksum, with header and features' shape checked."""
    with safe_open(path, framework="np") as f:
        metadata = f.metadata()
        _check_metadata(metadata, key)
        features = f.get_slice("features")
        shape, dtype = features.get_shape(), features.get_dtype()
        keys = f.get_tensor("digests")
        _check_digests(keys, metadata)
    if dtype != "F32" or len(shape) != 2 or shape[0] != len(keys):
        raise ValueError(f"features of shape {shape} and dtype {dtype} do not match "
                         f"{len(keys)} digests")
    return keys, metadata["digests_blake2b"]


def _read_rows(path, key, digests_checksum, rows):
    """Features of ``rows`` of a chunk whose digests had ``digests_checksum``.

    The digests read are checked against their checksum, and that against the
    one indexed, so a row number still names the sample it was indexed for.

    Only the rows asked for are read (a contiguous run of rows at a time),
    each checked against its own stored checksum.
    """
    with safe_open(path, framework="np") as f:
        metadata = f.metadata()
        _check_metadata(metadata, key)
        stored = f.get_tensor("digests")
        _check_digests(stored, metadata)
        if metadata["digests_blake2b"] != digests_checksum:
            raise ValueError("the chunk's digests changed since it was indexed")
        row_sums = f.get_tensor("row_blake2b")
        if row_sums.shape != stored.shape or _checksum(row_sums) != metadata["rows_blake2b"]:
            raise ValueError("the stored row checksums do not match their checksum")
        features = f.get_slice("features")
        if features.get_dtype() != "F32" or features.get_shape()[0] != len(stored):
            raise ValueError("the stored features do not match the digests")
        wanted = np.unique(rows)
        runs = np.split(wanted, np.flatnonzero(np.diff(wanted) != 1) + 1)
        read = np.concatenate([features[int(run[0]):int(run[-1]) + 1] for run in runs])
    if not np.array_equal(_row_checksums(read), row_sums[wanted]):
        raise ValueError("the stored features do not match their checksums")
    return read[np.searchsorted(wanted, rows)]


def _check_metadata(metadata, key):
    metadata = metadata or {}
    if metadata.get("format") != str(FORMAT) or metadata.get("key") != key:
        raise ValueError(f"not a chunk of format {FORMAT} for key {key}")


def _check_digests(keys, metadata):
    if (keys.dtype != np.uint8 or keys.ndim != 2 or keys.shape[1] != _DIGEST_SIZE
            or _checksum(keys) != metadata.get("digests_blake2b")):
        raise ValueError("the stored digests do not match their checksum")


def _row_checksums(features):
    """A 16-byte blake2b digest of each row, as a ``(n, 16)`` uint8 array."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    sums = b"".join(hashlib.blake2b(row, digest_size=_DIGEST_SIZE).digest() for row in features)
    return np.frombuffer(sums, dtype=np.uint8).reshape(len(features), _DIGEST_SIZE)


def _checksum(array):
    return hashlib.blake2b(np.ascontiguousarray(array), digest_size=16).hexdigest()


# -- keys --------------------------------------------------------------------


def output_key(backbone, *, layers, pooling, precision):
    """Hash of everything that changes the embeddings a backbone gives.

    Parameters
    ----------
    backbone : Backbone
        Its spec, modality, preprocessing constants, architecture (the
        module's ``repr`` and the source code of every module class in it;
        see :func:`module_fingerprint`) and weights (by content, through
        :func:`~sktransfer._weights_cache.weights_digest`) enter the key.
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
        "architecture": module_fingerprint(backbone.module),
        "weights": weights_digest(backbone.module),
        "preprocess": (type(preprocess).__name__, config),
        # How image files are decoded (16-bit scaling, modes): entries made
        # under older, wrong decoding rules are never served.
        "decoding": DECODING,
        "layers": None if layers is None else list(layers),
        "pooling": pooling,
        "precision": str(precision),
    })


def module_fingerprint(module):
    """What a module computes apart from its weights: its structure and code.

    The module's ``repr`` (submodules, their order and settings) and, for
    every class in it (and their bases up to ``nn.Module``), the qualified
    name and a hash of its source code, so two networks with the same
    weights but another activation, or another ``forward``, differ. Code
    outside the module classes (a helper function ``forward`` calls) is not
    seen.

    Examples
    --------
    >>> from torch import nn
    >>> relu = module_fingerprint(nn.Sequential(nn.Linear(3, 2), nn.ReLU()))
    >>> tanh = module_fingerprint(nn.Sequential(nn.Linear(3, 2), nn.Tanh()))
    >>> relu == module_fingerprint(nn.Sequential(nn.Linear(3, 2), nn.ReLU())), relu == tanh
    (True, False)
    """
    import torch

    classes = set()
    for sub in module.modules():
        for cls in type(sub).__mro__:
            if cls is torch.nn.Module or cls is object:
                break
            classes.add(cls)
    return hashlib.blake2b(
        "\0".join([repr(module), *sorted(_class_code(cls) for cls in classes)]).encode(),
        digest_size=16).hexdigest()


_CLASS_CODE = weakref.WeakKeyDictionary()


def _class_code(cls):
    """``module.qualname`` and a hash of the class's source (cached per class)."""
    code = _CLASS_CODE.get(cls)
    if code is None:
        name = f"{cls.__module__}.{cls.__qualname__}"
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):  # built in, made by exec, or no file
            source = ""
        digest = hashlib.blake2b(source.encode(), digest_size=16).hexdigest()
        code = _CLASS_CODE[cls] = f"{name}:{digest}"
    return code


def sample_digests(samples):
    """One 16-byte digest per sample, by content.

    Arrays are hashed row by row with their dtype, layout and shape; file
    paths by the bytes of the file (a file rewritten in place gets a new
    digest; two copies of one file share it), and the bytes of image files
    (kind ``"encoded"``) alike; PIL images by mode, size, palette and pixels;
    strings by their UTF-8 bytes.

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
    if kind == "encoded":
        return [_digest(b"image\0", blob) for blob in data]
    if kind == "pil":
        return [_image_digest(img) for img in data]
    raise ValueError(f"cannot cache samples of kind {kind!r}")


def _block_contents(samples, positions):
    """Digests of ``samples[positions]``, and for files the bytes they digest.

    An image file is read once: its digest and its embedding come from the
    same bytes, so a file rewritten meanwhile cannot be stored under the
    digest of its old content.
    """
    if samples.kind == "paths":
        blobs = [_read_file(samples.data[i]) for i in positions]
        return [_digest(b"image\0", blob) for blob in blobs], blobs
    return sample_digests(samples.subset(positions)), [None] * len(positions)


def _read_file(path):
    with open(path, "rb") as fh:
        return fh.read()


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

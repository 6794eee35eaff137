"""The feature cache's front: :class:`FeatureCache`, and the run of one ``embed`` call.

A call digests its samples a block at a time, looks each block up in the
store's index at once, computes and stores the misses a block at a time, and
reads the hits afterwards, chunk by chunk. What identifies a computation and
a sample is in :mod:`.keys`; the files and the index are in :mod:`.store`.
"""

import os
import warnings

import joblib
import numpy as np

from ..inputs import Samples
from .keys import block_digests
from .store import NAMESPACE, chunk_index

#: Samples embedded and stored together: what an interrupted call keeps, and
#: (for image files) how many files' bytes are held in memory at once.
BLOCK_SIZE = 512


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

    Raises
    ------
    TypeError
        For a ``cache`` that is none of these.

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

        A chunk that cannot be written (full disk, read-only directory)
        warns once per call; the embeddings are still returned.

        Parameters
        ----------
        samples : Samples
            From :func:`sktransfer.inputs.as_samples`.
        key : str
            Identifies the computation (see :func:`~sktransfer.feature_cache.keys.output_key`).
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
        index = chunk_index(os.path.join(self.root, NAMESPACE), key)
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
            digests, payloads = block_digests(self.samples, block)
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
        """The result, once every position is filled (duplicates copied last)."""
        for position, source in self.copies:
            self.out.array[position] = self.out.array[source]
        return self.out.array

    def _flush(self):
        if not self.pending:
            return
        digests = list(self.pending)
        entries = [self.pending[d] for d in digests]
        if self.samples.kind in ("paths", "audio_paths"):
            # The bytes that were digested, not the file again: it may have
            # been rewritten since.
            payloads = [payload for payload, _ in entries]
            todo = (self.samples.encoded(payloads) if self.samples.kind == "audio_paths"
                    else Samples(payloads, "encoded"))
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

"""The feature cache on disk: chunk files, and the in-process index of them.

Layout, under the cache directory (a ``joblib.Memory``'s store)::

    <root>/sktransfer-features/<output key>/<chunk id>/features.safetensors
    <root>/sktransfer-features/<output key>/.tmp-<chunk id>-<random>   (being written)

Each chunk holds one block of samples embedded together: a safetensors file
with their digests (uint8, ``(n, 16)``), features (float32, ``(n, d)``) and a
checksum of each feature row (uint8, ``(n, 16)``), and the format, output key
and checksums of the digests and of the row checksums in its metadata.
Safetensors holds arrays only, so reading an entry never runs code, and every
checksum is verified before a value is used; an entry that fails is deleted
and its samples embedded again.

A cache directory may be shared, so what is in it is data to check, never to
trust: only names of 32 hex digits are read as chunks; a chunk file is
opened only if it is a regular file reached through no symbolic link (a FIFO
or a device planted there would block or feed a read forever), and it must
be named by the checksum of its own digests; deleting a bad chunk never
follows a link, and a write never goes through one. Someone who can write
the directory can still store wrong numbers with matching checksums (the
checksums detect damage, they are no signature): share a cache directory
only with those whose embeddings you would use.

Writes go to a temporary file beside the chunk directories, are flushed to
disk, then renamed into place, so readers never see a torn file. Temporary
files of killed writers are ignored and removed once they are old. Chunk
directories are named like joblib's own items (32 hex digits), so
``memory.reduce_size()`` and ``memory.clear()`` manage them too.

A process keeps, per output key, an index of which chunk holds which digest,
read from the digests tensors alone (:class:`ChunkIndex`); a lookup reads
features only from the chunks that hold its hits. It keeps the indexes of
the :data:`MAX_INDEXES` keys used last; an index dropped is read again from
the disk when its key is used again.
"""

import collections
import contextlib
import os
import re
import threading
import time
import uuid
from typing import NamedTuple

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save as save_tensors

from .._utils.files import write_atomically
from .files import CHUNK_FILE as _FILE
from .files import make_chunk_directory, opened_chunk, remove_chunk
from .keys import DIGEST_SIZE, FORMAT, hash_of

#: Directory under the joblib store that holds the feature cache.
NAMESPACE = "sktransfer-features"
#: Seconds after which a temporary file is taken to be a killed writer's.
STALE_AFTER = 3600.0
#: Output keys whose index a process keeps in memory (those used last).
MAX_INDEXES = 64
# Names that refresh() skips and _remove_stale() may delete: never a chunk.
_TMP_PREFIX = ".tmp-"
# What a chunk's directory is named: the hex checksum of its digests.
_CHUNK_NAME = re.compile(r"[0-9a-f]{32}")

_LOCK = threading.Lock()
# (namespace directory, output key) -> ChunkIndex, one per process, last used last.
_INDEXES = collections.OrderedDict()


def chunk_index(directory, key):
    """This process's index of the chunks of output ``key`` under ``directory``.

    One per directory and key, shared by every cache object and thread, so
    what one call has read is not read again by the next.

    Parameters
    ----------
    directory : str
        The namespace directory (``<root>/sktransfer-features``).
    key : str
        The output key.

    Returns
    -------
    ChunkIndex
    """
    with _LOCK:
        index = _INDEXES.get((directory, key))
        if index is None:
            index = _INDEXES[(directory, key)] = ChunkIndex(directory, key)
            while len(_INDEXES) > MAX_INDEXES:
                # A call still using the dropped index keeps it until it returns.
                _INDEXES.popitem(last=False)
        else:
            _INDEXES.move_to_end((directory, key))
        return index


class ChunkIndex:
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

    Parameters
    ----------
    directory : str
        The namespace directory; the key's chunks are in ``directory/key``.
    key : str
        The output key, also checked in every chunk's metadata.
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
        present = {n for n in names if _CHUNK_NAME.fullmatch(n)}
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

        Parameters
        ----------
        hits : list of (position, chunk number, row)
            From :meth:`locate`; each chunk is read once, for all of its rows.
        out : object with ``array`` (ndarray or None) and ``put(positions, rows)``
            Where the rows go; rows of another width than ``out.array``'s fail.

        Returns
        -------
        list of int
            Sorted positions whose chunk went bad or vanished since it was indexed.
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
        keys = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, DIGEST_SIZE)
        features = np.ascontiguousarray(features, dtype=np.float32)
        digests_checksum = _checksum(keys)
        # Named by its content (the checksum of its digests): two workers
        # embedding the same samples write the same chunk, and the second
        # rename replaces equivalent bytes.
        chunk = digests_checksum
        # One checksum per row, so that a lookup can verify the rows it reads
        # without reading the whole chunk.
        row_sums = _row_checksums(features)
        metadata = {"format": str(FORMAT), "key": self.key,
                    "digests_blake2b": digests_checksum, "rows_blake2b": _checksum(row_sums)}
        data = save_tensors({"digests": keys, "features": features, "row_blake2b": row_sums},
                            metadata=metadata)
        # Beside the chunk directories, never in one: refresh() skips the
        # prefix, and _remove_stale() deletes such files a killed writer left.
        temporary = os.path.join(self.directory, f"{_TMP_PREFIX}{chunk}-{uuid.uuid4().hex}")
        try:
            make_chunk_directory(os.path.join(self.directory, chunk))
            write_atomically(self._path(chunk), lambda path: _write_bytes(path, data),
                             temporary=temporary)
        except OSError:
            # The chunk's directory is made before the temporary file is; a
            # failed write must not leave it empty (another writer's file
            # keeps it, as rmdir only removes an empty directory).
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(self.directory, chunk))
            raise
        self._add(chunk, keys, digests_checksum)

    def _path(self, chunk):
        return os.path.join(self.directory, chunk, _FILE)

    def _add_from_disk(self, chunk):
        try:
            with opened_chunk(self.directory, chunk) as path:
                keys, digests_checksum = _read_digests(path, self.key)
            if digests_checksum != chunk:
                raise ValueError(f"chunk {chunk} holds digests of checksum {digests_checksum}")
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
            with opened_chunk(self.directory, chunk) as path:
                features = _read_rows(path, self.key, known.digests_checksum, rows)
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
        remove_chunk(os.path.join(self.directory, chunk))


class _Chunk(NamedTuple):
    """What the index keeps of one chunk besides its rows in the sorted arrays."""

    number: int  # its number in the index's arrays
    digests_checksum: str  # of its digests tensor, as indexed


#: A digest as one numpy scalar: void scalars compare as bytes (memcmp), so
#: an array of them sorts and ``searchsorted`` works on it.
_KEY = np.dtype(f"V{DIGEST_SIZE}")
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


def _remove_stale(directory, temporaries):
    """Delete temporary files left by writers killed over STALE_AFTER ago."""
    limit = time.time() - STALE_AFTER
    for name in temporaries:
        path = os.path.join(directory, name)
        with contextlib.suppress(OSError):
            # lstat: a link's own age; remove: the link itself, never its target.
            if os.lstat(path).st_mtime < limit:
                os.remove(path)


# -- one chunk file ------------------------------------------------------------


def _write_bytes(path, data):
    with open(path, "wb") as fh:
        fh.write(data)


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
    if (keys.dtype != np.uint8 or keys.ndim != 2 or keys.shape[1] != DIGEST_SIZE
            or _checksum(keys) != metadata.get("digests_blake2b")):
        raise ValueError("the stored digests do not match their checksum")


def _row_checksums(features):
    """A 16-byte blake2b digest of each row, as a ``(n, 16)`` uint8 array."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    sums = b"".join(hash_of([row]).digest() for row in features)
    return np.frombuffer(sums, dtype=np.uint8).reshape(len(features), DIGEST_SIZE)


def _checksum(array):
    """The hex checksum of an array's bytes (the chunk's name, and in its metadata)."""
    return hash_of([np.ascontiguousarray(array)]).hexdigest()

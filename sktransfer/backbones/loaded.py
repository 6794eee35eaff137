"""Backbones loaded once per process, handed out as private copies.

``GridSearchCV`` clones and refits an estimator once per candidate and fold.
Without this cache every clone would read the same weights file again and
rebuild the same network; here a backbone is loaded once per process and each
fit gets its own deep copy, so no two estimators ever share a module that one
of them might move to a device or train.
"""

import collections
import os
import threading

import numpy as np

from .._utils.seeding import seeded
from ..feature_cache.keys import known_weights_digest, remember_weights_digest, weights_digest
from .reference import origin, tensors_state, use_loader
from .specs import load_backbone

#: Backbones kept per process; a search over a few backbones fits, and an
#: old one is dropped before memory fills with networks nobody uses.
MAX_ENTRIES = 4

_LOCK = threading.Lock()
_BACKBONES = collections.OrderedDict()  # cache key -> template Backbone, oldest first


def load_backbone_cached(spec, weights="DEFAULT", *, pooling="auto", image_size=None,
                         random_state=None, share_parameters=False):
    """:func:`~sktransfer.backbones.load_backbone`, read from disk once per process.

    Parameters
    ----------
    spec, weights, pooling, image_size
        As for :func:`~sktransfer.backbones.load_backbone`.
    random_state : int, RandomState or None, default=None
        The seed of a random initialization (``weights=None``): an integer
        seeds it and names it in the cache; otherwise nothing is cached and
        the backbone is drawn from torch's RNG as the caller left it (call
        this inside :func:`~sktransfer._utils.seeding.seeded`, as
        ``PretrainedFeatureTransformer.fit`` does).
    share_parameters : bool, default=False
        The copy's parameters share the cached network's memory (see
        :meth:`Backbone.copy <sktransfer.backbones.Backbone.copy>`): for a
        fit that never writes them (under an adapter).

    Returns
    -------
    Backbone
        A private copy: changing its module never changes another caller's.

    Notes
    -----
    Only string specs are cached (a module or fitted estimator given by the
    user is already in memory). Pretrained tags are keyed by name, local
    weight files by path, size, modification time and inode, so a file
    rewritten in place is read again. A random initialization is cached only
    under an integer ``random_state``: without one, every fit is meant to
    start from new random weights.

    Examples
    --------
    >>> a = load_backbone_cached("torchvision:resnet18", weights=None, image_size=32,
    ...                          random_state=0)
    >>> b = load_backbone_cached("torchvision:resnet18", weights=None, image_size=32,
    ...                          random_state=0)
    >>> a.module is b.module, weights_digest(a.module) == weights_digest(b.module)
    (False, True)
    """
    key = _cache_key(spec, weights, pooling, image_size, random_state)
    if key is None:
        # Not cacheable: loaded as usual, under whatever seeding the caller set.
        return load_backbone(spec, weights, pooling=pooling, image_size=image_size)
    with _LOCK:
        template = _BACKBONES.get(key)
        if template is not None:
            _BACKBONES.move_to_end(key)
    if template is None:
        # Loaded outside the lock so that other threads are not held up by a
        # slow read; two threads missing together both load, and one wins.
        # An integer seed names the random weights in the key, so they are
        # drawn from exactly that seed, as a caller's own seeding would.
        with seeded(random_state if weights is None else None):
            template = load_backbone(spec, weights, pooling=pooling, image_size=image_size)
        with _LOCK:
            _BACKBONES[key] = template
            _BACKBONES.move_to_end(key)
            while len(_BACKBONES) > MAX_ENTRIES:
                _BACKBONES.popitem(last=False)
    if not share_parameters:
        # Hashed once (then remembered), so that the feature cache's key of
        # every copy costs nothing. Not for a fit under an adapter, which never
        # reads most of a large embedding table: hashing would bring all of it
        # into memory.
        weights_digest(template.module)
    backbone = template.copy(share_parameters=share_parameters)
    # A deep copy holds the same values, so it inherits the template's digest
    # (where it is known) instead of hashing every tensor again.
    digest = known_weights_digest(template.module)
    if digest is not None:
        remember_weights_digest(backbone.module, digest)
    # Where it came from and its tensors as loaded, so that an adapted model
    # can store its base by reference (see .reference).
    backbone.origin = origin(spec, weights, pooling, image_size)
    backbone.loaded_state = tensors_state(backbone.module)
    return backbone


use_loader(load_backbone_cached)


def clear():
    """Forget every cached backbone (they are reloaded on next use)."""
    with _LOCK:
        _BACKBONES.clear()


def _cache_key(spec, weights, pooling, image_size, random_state):
    """What identifies a loaded backbone, or None where it must not be cached."""
    if not isinstance(spec, str):
        return None
    if weights is None:
        if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)):
            return None
        origin = ("random", int(random_state))
    elif isinstance(weights, (str, os.PathLike)) and os.path.isfile(weights):
        origin = ("file", *_file_identity(weights))
    elif isinstance(weights, str):
        origin = ("tag", weights)
    else:
        return None
    source, _, name = spec.partition(":")
    local = _tree_identity(name) if source.startswith("hf") and os.path.isdir(name) else ()
    return spec, local, origin, pooling, image_size


def _file_identity(path):
    stat = os.stat(path)
    return (os.path.abspath(os.fspath(path)), stat.st_size, stat.st_mtime_ns, stat.st_ino)


def _tree_identity(directory):
    """Every file below a local model directory, so that replacing one is seen."""
    found = []
    for root, _, files in os.walk(directory):
        for fname in sorted(files):
            found.append(_file_identity(os.path.join(root, fname)))
    return tuple(sorted(found))

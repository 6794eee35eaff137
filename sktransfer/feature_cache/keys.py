"""What identifies a cached embedding: the computation's key and each sample's digest.

An embedding is found again only if both halves match: the *output key*
(:func:`output_key`: the backbone's spec, architecture and code, weights by
content, layers, pooling, preprocessing, precision) names the directory, and
the *sample digest* (:func:`sample_digests`: a hash of the sample's own
content) names the row. Anything that can change an embedding must enter one
of the two, or a stale embedding would be served.

Every hash here, and every checksum of the store, is a 16-byte blake2b made
by :func:`hash_of`. Changing what enters a key, or how, changes which stored
entries are served: bump :data:`FORMAT` with it.
"""

import functools
import hashlib
import inspect
import itertools
import threading
import weakref

import joblib
import numpy as np
import torch

from ..engine.module import plain_attributes
from ..inputs import DECODING
from .encoding import encode, tensor_bytes

#: Changes whenever the stored layout or the key's meaning changes, so an old
#: cache is never read with new rules. 3: the key covers plain attributes,
#: forward hooks and non-persistent buffers.
FORMAT = 3
#: Bytes of every digest and checksum (blake2b's ``digest_size``).
DIGEST_SIZE = 16
# Image files are hashed in blocks of this many bytes, never read whole.
_READ_BLOCK = 1 << 20
# A file path, the bytes of that file and a decoded copy of them share a digest.
_IMAGE = b"image\0"


def hash_of(parts):
    """The blake2b hash (``DIGEST_SIZE`` bytes) of ``parts``, fed in turn.

    Parameters
    ----------
    parts : iterable of bytes-like
        Consumed lazily, so a generator of file blocks or of tensors is
        never held in memory at once.

    Returns
    -------
    hashlib.blake2b
        Call ``digest()`` or ``hexdigest()`` on it.

    Examples
    --------
    >>> hash_of([b"ab", b"c"]).hexdigest() == hash_of([b"abc"]).hexdigest()
    True
    >>> len(hash_of([b"abc"]).digest())
    16
    """
    h = hashlib.blake2b(digest_size=DIGEST_SIZE)
    for part in parts:
        h.update(part)
    return h


# -- the computation -----------------------------------------------------------


def output_key(backbone, *, layers, pooling, precision, runtime="torch", quantize=None,
               snapshot=None, calibration=None):
    """Hash of everything that changes the embeddings a backbone gives.

    Parameters
    ----------
    backbone : Backbone
        Its spec, modality, preprocessing constants, architecture (the
        module's ``repr``, plain attributes and hooks, and the source code of
        every module class in it; see :func:`module_fingerprint`) and weights
        (by content, through :func:`weights_digest`) enter the key.
    layers : list of str or None
    pooling : str
    precision : torch.dtype or None
        The autocast dtype actually used (``None`` for fp32).
    runtime : str, default="torch"
    quantize : str or None, default=None
        Compiled and ONNX graphs, and int8 ones above all, give slightly
        different numbers: their entries are their own.
    snapshot : ModelSnapshot, optional
        The snapshot of ``backbone.module`` that the engine computing the
        embeddings is built from (see :mod:`sktransfer.engine.snapshot`):
        the key then describes that snapshot, computed once for it, and not
        the live module, which may have changed since.
    calibration : str, optional
        The digest of the int8 network an OpenVINO engine runs (calibrated
        at fit, on that fit's samples): numbers of another calibration, or
        of a network a file planted, are never served under this one's key.

    Returns
    -------
    str

    Raises
    ------
    UnkeyableValueError
        For a network holding an attribute whose value has no stable
        encoding (see :mod:`.encoding`): refused rather than keyed loosely.

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
    model = model_key(backbone.module) if snapshot is None else snapshots_key([snapshot])[0]
    return joblib.hash({
        "format": FORMAT,
        "spec": backbone.spec,
        "modality": backbone.modality,
        **model,
        "preprocess": (type(preprocess).__name__, config),
        # How image files are decoded (16-bit scaling, modes): entries made
        # under older, wrong decoding rules are never served.
        "decoding": DECODING,
        "layers": None if layers is None else list(layers),
        "pooling": pooling,
        "precision": str(precision),
        # Only when not eager torch, so the keys of earlier entries hold.
        **({} if runtime == "torch" and quantize is None
           else {"runtime": runtime, "quantize": quantize}),
        **({} if calibration is None else {"calibration": calibration}),
    })


def snapshots_key(snapshots):
    """:func:`model_key` of each :class:`~sktransfer.engine.snapshot.ModelSnapshot`'s module,
    computed once per snapshot."""
    return [s.memo("feature cache key", functools.partial(model_key, source=s.source))
            for s in snapshots]


def model_key(module, *, source=None):
    """The part of the key that describes a network: its fingerprint and its weights.

    Parameters
    ----------
    module : torch.nn.Module
    source : torch.nn.Module, optional
        A module whose tensors ``module`` shares (the live module a snapshot
        copied): its remembered weights digest serves ``module`` when their
        tensors are the same ones, unchanged, so the weights are not hashed
        again.

    Returns
    -------
    dict
        ``{"architecture": ..., "weights": ...}``.
    """
    if source is not None:
        _inherit_weights_digest(module, source)
    return {"architecture": module_fingerprint(module), "weights": weights_digest(module)}


def module_fingerprint(module):
    """What a module computes apart from its weights: its structure, settings and code.

    The module's ``repr`` (submodules, their order and settings), every
    plain attribute of every submodule (``self.scale = 100``, a config
    object, a function; see :mod:`.encoding`), its forward hooks, and, for
    every class in it (and their bases up to ``nn.Module``), the qualified
    name and a hash of its source code, so two networks with the same
    weights but another activation, setting, or ``forward`` differ. Code
    outside the module classes and hooks (a helper function ``forward``
    calls) is not seen.

    Parameters
    ----------
    module : torch.nn.Module

    Returns
    -------
    str
        A hex digest.

    Raises
    ------
    UnkeyableValueError
        For an attribute whose value has no stable encoding.

    Examples
    --------
    >>> from torch import nn
    >>> relu = module_fingerprint(nn.Sequential(nn.Linear(3, 2), nn.ReLU()))
    >>> tanh = module_fingerprint(nn.Sequential(nn.Linear(3, 2), nn.Tanh()))
    >>> relu == module_fingerprint(nn.Sequential(nn.Linear(3, 2), nn.ReLU())), relu == tanh
    (True, False)
    """
    classes = set()
    for sub in module.modules():
        for cls in type(sub).__mro__:
            if cls is torch.nn.Module or cls is object:
                break
            classes.add(cls)
    text = "\0".join([repr(module), *_attributes_text(module),
                      *sorted(_class_code(cls) for cls in classes)])
    return hash_of([text.encode()]).hexdigest()


def _attributes_text(module):
    """One line per submodule: its name, plain attributes and forward hooks.

    Registered submodules, parameters and buffers met again in an attribute
    are encoded as their names (their weights are keyed by value apart).
    """
    named = list(module.named_modules())
    seen = {id(m): (name, m) for name, m in named}
    seen.update((id(t), (name, t)) for name, t in itertools.chain(
        module.named_parameters(), module.named_buffers()))
    for name, sub in named:
        path = name or "<root>"
        prefix = f"{name}." if name else ""
        fields = vars(sub)
        parts = [f"{k}={encode(fields[k], prefix + k, seen)}" for k in plain_attributes(sub)]
        # Hooks in order (their dictionary keys are process-wide counters).
        for kind in ("pre", "post"):
            hooks = sub._forward_pre_hooks if kind == "pre" else sub._forward_hooks
            with_kwargs = (sub._forward_pre_hooks_with_kwargs if kind == "pre"
                           else sub._forward_hooks_with_kwargs)
            parts += [f"<{kind} hook {h in with_kwargs}>={encode(hook, f'{prefix}<hook>', seen)}"
                      for h, hook in hooks.items()]
        yield f"{path}:{','.join(parts)}"


_CLASS_CODE = weakref.WeakKeyDictionary()
# inspect.getsource parses the class's file with ast.parse, which CPython 3.11
# (before 3.11.8 / 3.12.1, gh-106905) cannot run in two threads at once: it
# raises "SystemError: AST constructor recursion depth mismatch". Threads of
# one Dask worker meet here together on their first cached call.
_CLASS_CODE_LOCK = threading.Lock()


def _class_code(cls):
    """``module.qualname`` and a hash of the class's source (cached per class)."""
    code = _CLASS_CODE.get(cls)
    if code is None:
        name = f"{cls.__module__}.{cls.__qualname__}"
        with _CLASS_CODE_LOCK:
            try:
                source = inspect.getsource(cls)
            except (OSError, TypeError):  # built in, made by exec, or no file
                source = ""
        code = _CLASS_CODE[cls] = f"{name}:{hash_of([source.encode()]).hexdigest()}"
    return code


# module -> (tensors' state, digest); weak, so a dropped estimator frees its module.
_DIGESTS = weakref.WeakKeyDictionary()
_DIGESTS_LOCK = threading.Lock()


def weights_digest(module):
    """A hex digest of a module's parameters and buffers (non-persistent ones too), by value.

    The identity of a module's weights by content: the same weights under
    another name hit, changed weights (fine-tuned, another seed, a rewritten
    file) miss. Computed once per module and remembered while its tensors are
    untouched: any in-place change (an optimizer step, ``load_state_dict``)
    bumps the tensors' version counters and the digest is computed anew.

    Parameters
    ----------
    module : torch.nn.Module

    Returns
    -------
    str

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Linear(2, 1)
    >>> before = weights_digest(net)
    >>> with torch.no_grad():
    ...     _ = net.bias.add_(1.0)
    >>> weights_digest(net) == before
    False
    """
    state = _tensors_state(module)
    with _DIGESTS_LOCK:
        known = _DIGESTS.get(module)
    if known is not None and state is not None and known[0] == state:
        return known[1]
    value = hash_of(_weights_parts(module)).hexdigest()
    if state is not None:
        with _DIGESTS_LOCK:
            _DIGESTS[module] = (state, value)
    return value


def known_weights_digest(module):
    """The digest :func:`weights_digest` remembers for ``module`` as it is now, or None.

    Reads no weight: None where it would have to hash them.
    """
    with _DIGESTS_LOCK:
        known = _DIGESTS.get(module)
    if known is not None and known[0] is not None and known[0] == _tensors_state(module):
        return known[1]
    return None


def remember_weights_digest(module, digest):
    """Record that ``module``'s weights, as they are now, have ``digest``.

    For a deep copy of a module whose digest is known: it holds the same
    values, so it inherits the digest instead of hashing every tensor again.
    Like a computed digest, it is dropped as soon as a tensor changes.
    """
    state = _tensors_state(module)
    if state is not None:
        with _DIGESTS_LOCK:
            _DIGESTS[module] = (state, digest)


def _inherit_weights_digest(module, source):
    """Give ``module`` the digest remembered for ``source`` if they hold the same tensors."""
    with _DIGESTS_LOCK:
        known = _DIGESTS.get(source)
    if known is not None and known[0] is not None and known[0] == _tensors_state(module):
        remember_weights_digest(module, known[1])


def _named_tensors(module):
    """``(name, tensor)`` of the state dict, then of the non-persistent buffers.

    A non-persistent buffer (``register_buffer(..., persistent=False)``, a
    mask, rotary frequencies) is left out of state dicts but enters the
    computation like any other.
    """
    state = module.state_dict(keep_vars=True)
    yield from state.items()
    for name, buffer in module.named_buffers():
        if name not in state:
            yield f"{name}\0non-persistent", buffer


def _weights_parts(module):
    """The bytes :func:`weights_digest` hashes, one tensor at a time."""
    for name, tensor in _named_tensors(module):
        yield name.encode()
        if isinstance(tensor, torch.nn.parameter.UninitializedTensorMixin):
            yield b"\0uninitialized"
            continue
        yield f"\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode()
        yield tensor_bytes(tensor)


def _tensors_state(module):
    """Where each tensor lives and how often it was changed in place.

    ``None`` when a tensor has no storage to point at (lazy parameters):
    such a module is hashed on every call instead of trusted.
    """
    try:
        return tuple((name, t.device.type, t.data_ptr(), t._version)
                     for name, t in _named_tensors(module))
    except (RuntimeError, ValueError, AttributeError):
        return None


# -- the samples ---------------------------------------------------------------


def sample_digests(samples):
    """One 16-byte digest per sample, by content.

    Arrays are hashed row by row with their dtype, layout and shape; file
    paths by the bytes of the file (a file rewritten in place gets a new
    digest; two copies of one file share it), and the bytes of image files
    (kind ``"encoded"``) alike; audio clips by their samples or file bytes
    with the rule that resamples them (stated rate, model rate, truncation,
    resampler version); PIL images by mode, size, palette and pixels;
    strings by their UTF-8 bytes.

    Parameters
    ----------
    samples : Samples
        From :func:`sktransfer.inputs.as_samples`.

    Returns
    -------
    list of bytes

    Raises
    ------
    ValueError
        For samples of a kind that cannot be cached.

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
        return [hash_of([prefix, np.ascontiguousarray(row)]).digest() for row in array]
    if kind == "text":
        return [hash_of([b"text\0", s.encode("utf-8", "surrogatepass")]).digest()
                for s in data]
    if kind == "paths":
        return [_file_digest(path) for path in data]
    if kind == "encoded":
        return [hash_of([_IMAGE, blob]).digest() for blob in data]
    if kind == "pil":
        return [_image_digest(img) for img in data]
    if kind == "audio_arrays":
        return [_clip_digest(samples.rule(), clip) for clip in data]
    if kind == "audio_paths":
        return [_file_digest(path, samples.rule()) for path in data]
    if kind == "audio_encoded":
        return [hash_of([samples.rule(), blob]).digest() for blob in data]
    raise ValueError(f"cannot cache samples of kind {kind!r}")


def block_digests(samples, positions):
    """Digests of ``samples[positions]``, and for files the bytes they digest.

    An image file is read once: its digest and its embedding come from the
    same bytes, so a file rewritten meanwhile cannot be stored under the
    digest of its old content.

    Returns
    -------
    digests : list of bytes
    payloads : list of bytes or None
        The file's bytes for samples of kind ``"paths"`` and
        ``"audio_paths"``, else None.
    """
    if samples.kind in ("paths", "audio_paths"):
        blobs = [_read_file(samples.data[i]) for i in positions]
        prefix = _IMAGE if samples.kind == "paths" else samples.rule()
        return [hash_of([prefix, blob]).digest() for blob in blobs], blobs
    return sample_digests(samples.subset(positions)), [None] * len(positions)


def _read_file(path):
    with open(path, "rb") as fh:
        return fh.read()


def _file_digest(path, prefix=_IMAGE):
    # Decoded images depend on the bytes only, so the bytes are the key; the
    # same digest as the file's bytes given whole (kind "encoded"). Sound
    # also depends on how it is resampled: its prefix names the rule.
    with open(path, "rb") as fh:
        blocks = iter(lambda: fh.read(_READ_BLOCK), b"")
        return hash_of(itertools.chain([prefix], blocks)).digest()


def _clip_digest(rule, clip):
    # The samples as given, with their dtype and shape (int16 and float
    # clips of one sound decode alike but are different inputs), and the
    # rule (stated rate, model rate, truncation) that turns them into the
    # model's samples.
    array = np.ascontiguousarray(clip)
    header = f"{array.dtype.str}\0{array.shape}\0".encode()
    return hash_of([rule, header, array]).digest()


def _image_digest(img):
    palette = img.getpalette() if img.mode in ("P", "PA") else None
    header = f"pil\0{img.mode}\0{img.size}\0{palette}\0".encode()
    return hash_of([header, img.tobytes()]).digest()

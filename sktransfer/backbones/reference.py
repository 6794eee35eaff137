"""An adapted network stored as its difference: the base by reference, checked by digest.

A LoRA-tuned model changes a few hundred thousand numbers of a network that
holds hundreds of millions. Its pickles and model files store the adapter and
a *reference* to the pretrained base instead of the base itself: the
arguments that loaded it (spec, weights, pooling, image size) and a digest of
its tensors. Loading rebuilds the base the way a fit loads it (a local
directory or file, or the usual download cache) and refuses it when its
digest differs, so a changed base never serves numbers the adapter was not
trained with.

The reference is used only where it is exact: the backbone was loaded from a
string spec with pretrained weights (not a random initialization), and its
base tensors (parameters and buffers: a BatchNorm's running statistics move
in training even when its weights are fixed) still hold the digest they had
when loaded. Otherwise, and under :func:`self_contained`, the whole network
is stored.
"""

import contextlib
import contextvars
import os

from ..feature_cache.keys import weights_digest

class BaseNetworkError(ValueError):
    """The base network an adapted model refers to cannot be loaded, or is another one.

    The model's file or pickle is intact; what it needs is missing or changed
    where it is loaded. The message says which base, and how to write a
    file that holds it (``sktransfer.save(..., include_base=True)``).
    """


#: The network kind of a stored backbone whose base is a reference.
REFERENCE = "reference"

_SELF_CONTAINED = contextvars.ContextVar("sktransfer_self_contained", default=False)

#: How a base is loaded: :func:`~sktransfer.backbones.load_backbone_cached`,
#: given by :mod:`.loaded` when it is imported (it loads the sources, which
#: build :class:`~sktransfer.backbones.Backbone` objects, whose state
#: functions call :func:`load_base`: an import here would be a cycle).
_LOADER = []


def use_loader(load):
    """Load bases with ``load`` (the signature of ``load_backbone_cached``)."""
    _LOADER[:] = [load]


@contextlib.contextmanager
def self_contained():
    """Within this block, adapted models pickle and save with their whole base network.

    By default the pickle (or :func:`sktransfer.save` file) of a model
    fine-tuned with an adapter holds the adapter, the head and a reference
    to its pretrained base, which loading rebuilds from where the fit found
    it and checks by digest. A self-contained file also holds the base: it
    loads where the base cannot be found (another machine without the model
    in its cache, a base directory since removed). ``sktransfer.save(...,
    include_base=True)`` does the same for one file.

    Examples
    --------
    >>> import pickle
    >>> import sktransfer
    >>> with sktransfer.self_contained():
    ...     payload = pickle.dumps([1, 2])  # an adapted model here holds its base
    """
    token = _SELF_CONTAINED.set(True)
    try:
        yield
    finally:
        _SELF_CONTAINED.reset(token)


def origin(spec, weights, pooling, image_size):
    """What :func:`load_base` needs to load a backbone again, or None where it cannot.

    A random initialization (``weights=None``) has no origin to load again,
    and only strings (a tag such as ``"DEFAULT"``, or a file's absolute
    path) name weights in a file.
    """
    if weights is None or not isinstance(spec, str):
        return None
    if isinstance(weights, os.PathLike) or (isinstance(weights, str) and os.path.isfile(weights)):
        weights = os.path.abspath(os.fspath(weights))
    elif not isinstance(weights, str):
        return None
    if isinstance(image_size, (tuple, list)):
        image_size = [int(v) for v in image_size]
    return {"spec": spec, "weights": weights, "pooling": pooling, "image_size": image_size}


def tensors_state(module, skip=frozenset()):
    """Where each tensor of ``module`` lives and how often it was written in place.

    What tells, without reading a weight, that a network's tensors are still
    those it was loaded with: a write in place bumps a tensor's version, and
    a replaced tensor, submodule or ``.data`` has another address. ``skip``:
    parameter names left out (an adapter's, added after loading).
    """
    tensors = [t for name, t in module.named_parameters() if name not in skip]
    tensors += [t for _, t in module.named_buffers()]
    try:
        return frozenset((t.device.type, t.data_ptr(), t._version) for t in tensors)
    except (RuntimeError, ValueError, AttributeError):  # lazy parameters: no storage yet
        return None


def check_origin(value):
    """``value`` as a base reference read from a pickle or file, or a ValueError."""
    fields = {"spec": str, "weights": str, "pooling": str, "digest": str}
    if (not isinstance(value, dict) or set(value) != {*fields, "image_size"}
            or not all(isinstance(value[k], t) for k, t in fields.items())):
        raise ValueError(f"the stored base reference is malformed: {value!r}")
    size = value["image_size"]
    if not (size is None or _is_int(size)
            or (isinstance(size, list) and len(size) == 2 and all(map(_is_int, size)))):
        raise ValueError(f"the stored base reference's image_size is malformed: {size!r}")
    return value


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 4096


def reference(backbone, base):
    """The stored reference to ``backbone``'s ``base`` network (its module without
    the adapter), or None where the base must be stored whole.

    Whether the base is still the one loaded is told by its tensors' state
    (no weight is read: a fit under an adapter never reads most of a large
    embedding table, and need not for this); the digest the file carries is
    taken now, from ``base`` itself.
    """
    found = backbone.origin
    if (found is None or backbone.loaded_state is None or backbone.adapter_config is None
            or _SELF_CONTAINED.get()):
        return None
    if tensors_state(backbone.module, skip=_adapter_names(backbone)) != backbone.loaded_state:
        return None
    return {**found, "digest": weights_digest(base)}


def _adapter_names(backbone):
    return frozenset(n for n, _ in backbone.module.named_parameters() if n not in backbone.fixed)


def load_base(found):
    """The base network an origin names, loaded as a fit loads it and checked by digest.

    Returns
    -------
    Backbone
        A private copy whose parameters share the process's cached base
        (never written: an adapter's base is fixed).

    Raises
    ------
    BaseNetworkError
        When the base cannot be loaded here, or loads with other weights
        than those the adapter was trained on.
    """
    size = found["image_size"]
    try:
        backbone = _LOADER[0](found["spec"], found["weights"],
                                        pooling=found["pooling"],
                                        image_size=tuple(size) if isinstance(size, list) else size,
                                        share_parameters=True)
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        raise BaseNetworkError(
            f"this adapted model stores its base network {found['spec']} (weights="
            f"{found['weights']!r}) by reference, and it cannot be loaded here: {exc}. Make "
            "it available (the same local directory or file, or the model in the download "
            "cache), or save the model where it was fitted with "
            "sktransfer.save(..., include_base=True) (for pickles: inside "
            "`with sktransfer.self_contained():`).") from exc
    digest = weights_digest(backbone.module)
    if digest != found["digest"]:
        raise BaseNetworkError(
            f"the base network {found['spec']} (weights={found['weights']!r}) found here "
            f"is not the one this model's adapter was trained on: its weights' digest is "
            f"{digest[:16]}..., the model was fitted on {found['digest'][:16]}.... Its "
            "predictions would be wrong. Restore the original base, or save the model "
            "where it was fitted with sktransfer.save(..., include_base=True).")
    return backbone

"""Where backbone sources and preprocess kinds register themselves.

Each source module (:mod:`.torchvision`, :mod:`.timm`, :mod:`.huggingface`)
registers, when imported, the prefix of its string specs
(``"timm:<name>"``) with three functions: how it loads a backbone, how it
describes a network for saving beyond its spec and state dict, and how it
rebuilds that network. Each preprocess kind registers how to rebuild a
preprocess from its ``state()``. Code that loads, saves or rebuilds a
backbone looks a source up by name here, so it never branches on where a
network came from, and a new source is one module that registers itself.

A leaf: it imports nothing from sktransfer, so every source module may
import it without a cycle. The registrations happen when
``sktransfer.backbones`` is imported (its ``__init__`` imports every source),
which Python does before any module of the package runs.
"""

from dataclasses import dataclass
from typing import Callable

#: Loaders for string specs, keyed by the prefix before the colon:
#: ``SOURCES[prefix](name, weights, pooling=..., image_size=...)`` gives a
#: :class:`~sktransfer.backbones.base.Backbone`.
SOURCES = {}

_NETWORKS = {}     # prefix -> Source
_PREPROCESS = {}   # preprocess kind -> from_state


@dataclass(frozen=True)
class Source:
    """How one kind of string spec loads, describes and rebuilds its networks.

    Parameters
    ----------
    prefix : str
        What comes before the colon in its specs (``"torchvision"``).
    load : callable
        ``load(name, weights, *, pooling, image_size)`` -> Backbone.
    network_state : callable
        ``network_state(backbone)`` -> dict: what the spec and the state
        dict do not say about the network (a swapped global pool, a model
        config), as JSON-able values.
    network_from_state : callable
        ``network_from_state(name, network)`` -> ``nn.Module`` with random
        weights, built offline from the spec's ``name`` and the dict
        ``network_state`` returned (among other keys), ready for the saved
        state dict to be loaded strictly.
    """

    prefix: str
    load: Callable
    network_state: Callable
    network_from_state: Callable


def register_source(prefix, load, network_state, network_from_state):
    """Register the source of ``"<prefix>:<name>"`` specs (see :class:`Source`)."""
    SOURCES[prefix] = load
    _NETWORKS[prefix] = Source(prefix, load, network_state, network_from_state)


def get_source(prefix):
    """The :class:`Source` registered for ``prefix``.

    Raises
    ------
    KeyError
        When no source has that prefix.

    Examples
    --------
    >>> import sktransfer.backbones
    >>> get_source("torchvision").prefix
    'torchvision'
    """
    return _NETWORKS[prefix]


def spec_source(spec):
    """``("torchvision", "resnet18")`` for a string spec a source rebuilds, else None.

    Examples
    --------
    >>> import sktransfer.backbones
    >>> spec_source("torchvision:resnet18"), spec_source("module:Net")
    (('torchvision', 'resnet18'), None)
    """
    source, sep, name = str(spec).partition(":")
    return (source, name) if sep and source in SOURCES and name else None


# -- preprocessing ------------------------------------------------------------------

def register_preprocess(kind, from_state):
    """Register how a preprocess whose ``state()`` has ``"kind": kind`` is rebuilt."""
    _PREPROCESS[kind] = from_state


def preprocess_state(preprocess):
    """The constants of a preprocess as a dict with a ``"kind"``.

    Preprocessors with a ``state()`` method (image, tensor, tokenize)
    describe themselves; any other callable is kept as
    ``{"kind": "object", "object": preprocess}`` for pickling only.

    Examples
    --------
    >>> from sktransfer.backbones.preprocess import TensorPreprocess
    >>> preprocess_state(TensorPreprocess())
    {'kind': 'tensor'}
    >>> preprocess_state(len)
    {'kind': 'object', 'object': <built-in function len>}
    """
    if hasattr(preprocess, "state") and hasattr(type(preprocess), "from_state"):
        return preprocess.state()
    return {"kind": "object", "object": preprocess}


def preprocess_from_state(config):
    """The preprocess :func:`preprocess_state` described.

    Raises
    ------
    ValueError
        For a kind no module registered.

    Examples
    --------
    >>> import sktransfer.backbones
    >>> preprocess_from_state({"kind": "tensor"})  # doctest: +ELLIPSIS
    <sktransfer.backbones.preprocess.TensorPreprocess object at ...>
    """
    kind = config["kind"]
    if kind not in _PREPROCESS:
        raise ValueError(f"unknown preprocess kind {kind!r}")
    return _PREPROCESS[kind](config)


def _carried_object(config):
    # A callable without state() travels as itself, in pickles only (the
    # save format refuses it by name, see codec.non_json_values).
    return config["object"]


register_preprocess("object", _carried_object)

"""Adapters merged into the weights of an engine's own copy of a network.

A network with Hugging Face ``peft`` adapter layers (LoRA and its
relatives, see :mod:`sktransfer.backbones.adapters`) computes the adapter
beside each adapted layer; merged, each layer is one plain layer again and
the network runs at the cost of the network without adapters. Engines merge
their private copy; the fitted model keeps its adapters unmerged, for
further training.
"""

import copy
import sys

__all__ = ["has_adapters", "merged_network", "replace_module", "tuner_layers"]


def _tuner_base():
    # A network holding peft layers was built by peft: it is imported then.
    peft = sys.modules.get("peft")
    return None if peft is None else peft.tuners.tuners_utils.BaseTunerLayer


def has_adapters(module):
    """Whether ``module`` holds peft adapter layers (without importing peft).

    Examples
    --------
    >>> from torch import nn
    >>> has_adapters(nn.Linear(2, 2))
    False
    """
    base = _tuner_base()
    return base is not None and any(isinstance(sub, base) for sub in module.modules())


def tuner_layers(module):
    """The ``(name, layer)`` of every peft adapter layer in ``module``."""
    base = _tuner_base()
    if base is None:
        return []
    return [(name, sub) for name, sub in module.named_modules() if isinstance(sub, base)]


def replace_module(module, name, new):
    """Put ``new`` where the submodule ``name`` of ``module`` is."""
    parent, _, child = name.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, child, new)


def merged_network(module):
    """``module`` with every adapter merged into the weights of the layer it adapts.

    Each adapted layer is copied before its merge (the network's tensors
    may be shared with the fitted model, which keeps its adapters
    unmerged), and the copy's plain layer takes its place: the result runs
    as fast as the network without adapters. ``module`` is changed in place
    and returned: pass an engine's own copy.

    Examples
    --------
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(2, 2))
    >>> merged_network(net) is net
    True
    """
    for name, layer in tuner_layers(module):
        own = copy.deepcopy(layer)
        own.merge()
        replace_module(module, name, own.get_base_layer())
    return module

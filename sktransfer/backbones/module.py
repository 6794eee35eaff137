"""Backbones from a user's ``nn.Module``, a factory returning one, or a fitted
sktransfer estimator (whose backbone, fine-tuned or not, is reused)."""

import copy
import os

from torch import nn

from .base import Backbone
from .preprocess import TensorPreprocess
from .weights import is_weights_path, load_into, load_state_dict_file


def from_module(obj, weights="DEFAULT", **_):
    """Wrap an ``nn.Module`` (copied, never modified) or a factory's result.

    The module's forward output is the embedding, and its input is what the
    estimator is given, as float32 (``"tensor"`` modality). ``weights``:
    ``"DEFAULT"`` keeps the module's current weights, ``None`` re-initializes
    every layer that has ``reset_parameters``, a path loads a state dict.
    """
    if isinstance(obj, nn.Module):
        module = copy.deepcopy(obj)
        spec = f"module:{type(obj).__name__}"
    else:
        module = obj()
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"the backbone factory {obj!r} returned a {type(module).__name__}, "
                "not a torch.nn.Module"
            )
        spec = f"module:{getattr(obj, '__name__', type(module).__name__)}"
    weights_id = apply_weights(module, weights)
    return Backbone(module, TensorPreprocess(), "tensor", spec, weights_id)


def from_backbone(backbone, weights="DEFAULT", **_):
    """A private copy of a :class:`Backbone` (given directly or via an estimator)."""
    backbone = backbone.copy()
    if weights != "DEFAULT":
        backbone.weights_id = apply_weights(backbone.module, weights)
    return backbone


def apply_weights(module, weights):
    """Apply a ``weights`` choice to a module in place; return its identity."""
    if weights == "DEFAULT":
        return "as-given"
    if weights is None:
        for sub in module.modules():
            if hasattr(sub, "reset_parameters") and sub is not module:
                sub.reset_parameters()
        return "random"
    if is_weights_path(weights):
        load_into(module, load_state_dict_file(weights), weights)
        return f"file:{os.path.abspath(weights)}"
    raise ValueError(
        f"weights for a module backbone must be 'DEFAULT' (keep its weights), None "
        f"(re-initialize) or a path to a state dict file; got {weights!r}"
    )

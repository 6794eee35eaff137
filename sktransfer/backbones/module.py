"""Backbones from a user's ``nn.Module`` (on tensors, or on waveforms), a factory
returning one, or a fitted sktransfer estimator (whose backbone, fine-tuned or
not, is reused)."""

import copy

from torch import nn

from .base import Backbone
from .preprocess import TensorPreprocess, Waveforms
from .weights import DEFAULT, RANDOM, load_into, load_state_dict_file, resolve_weights


def from_module(obj, weights="DEFAULT", **_):
    """Wrap an ``nn.Module`` (copied, never modified) or a factory's result.

    The module's forward output is the embedding, and its input is what the
    estimator is given, as float32 (``"tensor"`` modality). ``weights``:
    ``"DEFAULT"`` keeps the module's current weights, ``None`` re-initializes
    every parameter (see :func:`apply_weights`), a path loads a state dict.
    """
    fresh = not isinstance(obj, nn.Module)
    if not fresh:
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
    weights_id = apply_weights(module, weights, fresh=fresh)
    return Backbone(module, TensorPreprocess(), "tensor", spec, weights_id)


def waveform_backbone(module, sampling_rate, weights="DEFAULT"):
    """A user's ``nn.Module`` on waveforms, as an audio backbone.

    The module's forward takes a float32 tensor ``(B, samples)`` of clips at
    ``sampling_rate`` and returns ``(B, D)``. The estimators then take what
    every audio backbone takes (file paths, or arrays with their
    ``sampling_rate=``), decode, mix down and resample them to the module's
    rate, and never pad a clip when embedding or predicting (batches hold
    clips of one length; see :class:`~sktransfer.backbones.preprocess.Waveforms`).

    Parameters
    ----------
    module : nn.Module or callable
        The network (copied, never modified), or a zero-argument factory.
    sampling_rate : int
        The rate (Hz) the module takes.
    weights : "DEFAULT", None or path, default="DEFAULT"
        As for a module backbone (see :func:`from_module`).

    Returns
    -------
    Backbone

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sktransfer import PretrainedFeatureTransformer
    >>> class Energy(nn.Module):
    ...     def forward(self, waveforms):
    ...         return waveforms.pow(2).mean(1, keepdim=True)
    >>> pft = PretrainedFeatureTransformer(waveform_backbone(Energy(), sampling_rate=16000),
    ...                                    sampling_rate=16000)
    >>> pft.fit_transform([np.ones(800, np.float32), np.zeros(1600, np.float32)]).ravel()
    array([1., 0.], dtype=float32)
    """
    tensor = from_module(module, weights)
    return Backbone(tensor.module, Waveforms(sampling_rate), "audio", tensor.spec,
                    tensor.weights_id)


def from_backbone(backbone, weights="DEFAULT", **_):
    """A private copy of a :class:`Backbone` (given directly or via an estimator)."""
    backbone = backbone.copy()
    if weights != "DEFAULT":
        backbone.weights_id = apply_weights(backbone.module, weights)
    return backbone


def apply_weights(module, weights, *, fresh=False):
    """Apply a ``weights`` choice to a module in place; return its identity.

    Parameters
    ----------
    module : nn.Module
        A private copy (or a module just built), changed in place.
    weights : "DEFAULT", None or path
        ``"DEFAULT"`` keeps the weights, ``None`` re-initializes them, a path
        loads a state dict file.
    fresh : bool, default=False
        True when ``module`` was just built by a factory: a parameter that no
        ``reset_parameters`` covers then holds its fresh initial value.

    Raises
    ------
    ValueError
        With ``weights=None``, for parameters of a given module that nothing
        can re-initialize (named), since keeping them would claim random
        weights while holding trained ones.

    Examples
    --------
    >>> from torch import nn
    >>> apply_weights(nn.Linear(2, 2), None)
    'random'
    """
    kind, weights_id = resolve_weights(
        weights, what="weights for a module backbone",
        accepted="'DEFAULT' (keep its weights), None (re-initialize) or a path to a state dict "
                 "file")
    if kind == DEFAULT:
        return "as-given"
    if kind == RANDOM:
        _reinitialize(module, check=not fresh)
    else:
        load_into(module, load_state_dict_file(weights), weights)
    return weights_id


def _reinitialize(module, *, check):
    """Call every submodule's reset method, the root's included, children first.

    Children go before their parent so that a module's own
    ``reset_parameters`` (which may, say, zero its last layer) has the last
    word; siblings keep their order, so layers draw their random values in
    the order they always did. With ``check``, parameters whose owner has no
    reset method are an error rather than kept as they are.
    """
    covered = set()
    for sub in _children_first(module, set()):
        reset = _reset_method(sub)
        if reset is not None:
            reset()
            covered.update(id(p) for p in sub.parameters(recurse=False))
    if not check:
        return
    left = [name for name, p in module.named_parameters() if id(p) not in covered]
    if left:
        owners = [type(module.get_submodule(name.rpartition(".")[0])).__name__ for name in left]
        shown = ", ".join(f"{name!r} (in {owner})" for name, owner in zip(left[:5], owners))
        more = f" and {len(left) - 5} more" if len(left) > 5 else ""
        raise ValueError(
            f"weights=None cannot re-initialize {shown}{more}: the modules holding them "
            f"define no reset_parameters(). To draw them anew, define reset_parameters() on "
            f"{', '.join(sorted(set(owners)))}, or pass as backbone a zero-argument factory "
            "(e.g. the class itself, or lambda: MyNet()) or a spec such as "
            "'torchvision:vit_b_16', so that a fresh module is built."
        )


def _children_first(module, seen):
    """Every submodule once (shared ones too), each after all of its children."""
    for child in module.children():
        if id(child) not in seen:
            seen.add(id(child))
            yield from _children_first(child, seen)
    yield module


def _reset_method(sub):
    """``sub.reset_parameters``, or torch's private one (MultiheadAttention's)."""
    reset = getattr(sub, "reset_parameters", None)
    if reset is None and type(sub).__module__.startswith("torch.nn."):
        reset = getattr(sub, "_reset_parameters", None)
    return reset if callable(reset) else None

"""Which backbone parameters train: the ``freeze`` modes and head-first training.

A backbone's parameter groups are ordered from input to output
(:attr:`Backbone.param_groups <sktransfer.backbones.base.Backbone>`), so
freezing "the first N groups" keeps the generic early layers as they were
pretrained while the task-specific later layers adapt.

Frozen parameters get ``requires_grad=False``: autograd then computes no
gradient for them, and the optimizers skip parameters without a gradient, so
neither the update nor weight decay moves them. Frozen BatchNorm layers are
also kept in evaluation mode (see :class:`~sktransfer.training.heads.BackboneWithHead`)
so that their running statistics do not drift either.
"""

import numbers

import torch
from torch import nn

from .._utils.validation import AnyOf, Interval, Options, check_param

FREEZE_MODES = ("auto", "none", "backbone")


#: What ``freeze`` takes; a count is checked against a backbone by :func:`n_frozen_groups`.
FREEZE_RULE = AnyOf(Options(FREEZE_MODES), Interval(numbers.Integral, 0),
                    description="'auto', 'none', 'backbone' or a number of parameter groups "
                                "to freeze")


def check_freeze(freeze):
    """Raise an InvalidParameterError unless ``freeze`` is a mode or a count >= 0.

    Examples
    --------
    >>> check_freeze(2)
    >>> check_freeze("all")
    Traceback (most recent call last):
    ...
    sktransfer._utils.validation.InvalidParameterError: freeze must be 'auto', 'none', 'backbone' or a number of parameter groups to freeze; got freeze='all'
    """
    check_param("freeze", freeze, FREEZE_RULE)


def auto_frozen(backbone):
    """How many leading groups ``freeze="auto"`` keeps frozen for ``backbone``.

    The groups its module names in ``frozen_by_default()`` (a speech model's
    convolutional feature encoder, which its loader puts first); 0 for
    modules that name none.

    Examples
    --------
    >>> from torch import nn
    >>> from sktransfer.backbones import load_backbone
    >>> auto_frozen(load_backbone(nn.Linear(2, 2)))
    0
    """
    names = getattr(backbone.module, "frozen_by_default", lambda: ())()
    count = 0
    for name, _ in backbone.param_groups:
        if name not in names:
            break
        count += 1
    return count


def n_frozen_groups(freeze, param_groups, auto=0):
    """How many of ``param_groups`` (input first) ``freeze`` keeps frozen.

    Parameters
    ----------
    freeze : {"auto", "none", "backbone"} or int
        ``"auto"``: the first ``auto`` groups (see :func:`auto_frozen`).
        ``"none"``: everything trains. ``"backbone"``: only the head trains
        (a linear probe when the head is linear). An int N: the first N
        parameter groups stay frozen.
    param_groups : list of (str, list of str)
        The backbone's groups, ordered input -> output.
    auto : int, default=0
        The count ``"auto"`` stands for.

    Raises
    ------
    ValueError
        For an unknown mode, a negative N, or N larger than the number of
        groups (the groups are named in the message).

    Examples
    --------
    >>> groups = [("conv1", ["conv1.weight"]), ("fc", ["fc.weight", "fc.bias"])]
    >>> n_frozen_groups("backbone", groups), n_frozen_groups(1, groups)
    (2, 1)
    """
    check_freeze(freeze)
    if freeze == "auto":
        return min(int(auto), len(param_groups))
    if freeze == "none":
        return 0
    if freeze == "backbone":
        return len(param_groups)
    if freeze > len(param_groups):
        names = [name or "<root>" for name, _ in param_groups]
        raise ValueError(
            f"freeze={freeze} is larger than the number of parameter groups of the "
            f"backbone ({len(param_groups)}: {names}); use at most {len(param_groups)}, "
            "or freeze='backbone' to freeze all of it."
        )
    return int(freeze)


def freeze_groups(model, param_groups, n_frozen, fixed=frozenset()):
    """Freeze the first ``n_frozen`` backbone groups of ``model``; unfreeze the rest.

    Parameters
    ----------
    model : BackboneWithHead
        The network; its head always trains.
    param_groups : list of (str, list of str)
        The backbone's groups, ordered input -> output, with parameter names
        relative to ``model.backbone``.
    n_frozen : int
        Number of leading groups to freeze. When it equals the number of
        groups, every backbone parameter is frozen, grouped or not.
    fixed : set of str, optional
        Backbone parameters that stay frozen in any group (the pretrained
        weights under an adapter: only the adapter trains).

    Examples
    --------
    >>> from sktransfer.training.heads import BackboneWithHead
    >>> body = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 4))
    >>> model = BackboneWithHead(body, nn.Linear(4, 1))
    >>> groups = [("0", ["0.weight", "0.bias"]), ("1", ["1.weight", "1.bias"]),
    ...           ("2", ["2.weight", "2.bias"])]
    >>> freeze_groups(model, groups, 2)
    >>> [p.requires_grad for p in body.parameters()]
    [False, False, False, False, True, True]
    >>> model.train().backbone[1].training
    False
    """
    everything = n_frozen > 0 and n_frozen >= len(param_groups)
    frozen = {name for _, names in param_groups[:n_frozen] for name in names}
    for name, param in model.backbone.named_parameters():
        param.requires_grad_(not (everything or name in frozen or name in fixed))
    for param in model.head.parameters():
        param.requires_grad_(True)
    frozen_modules = [name for name, _ in param_groups[:n_frozen] if name]
    model.frozen_norms = [
        module for name, module in model.backbone.named_modules()
        if _is_frozen_norm(name, module, frozen_modules, everything)
    ]
    model.train(model.training)


def _is_frozen_norm(name, module, frozen_modules, everything):
    if not (isinstance(module, nn.modules.batchnorm._NormBase)
            and module.track_running_stats):
        return False
    if everything:
        return True
    own = list(module.parameters(recurse=False))
    if own:
        return not any(p.requires_grad for p in own)
    # A norm layer without affine parameters follows the group it sits in.
    return any(name == group or name.startswith(group + ".") for group in frozen_modules)


def norms_needing_two_samples(model, param_groups, n_frozen, inputs, fixed=frozenset()):
    """The BatchNorm layers that cannot train on a batch of one sample.

    In training mode, a BatchNorm layer normalizes with the batch's own
    statistics, which a single value per channel does not have (a
    ``(1, C)`` input, or ``(1, C, 1, 1)`` after the last pooling stage of a
    small image): torch then fails with "Expected more than 1 value per
    channel". Layers frozen by ``n_frozen`` stay in evaluation mode and use
    their running statistics, so they are fine.

    Parameters
    ----------
    model : BackboneWithHead
    param_groups : list of (str, list of str)
        The backbone's groups, ordered input -> output.
    n_frozen : int
        Groups frozen while training.
    inputs : torch.Tensor or dict of torch.Tensor
        One preprocessed sample, as a batch of one; a forward pass in
        evaluation mode (no running statistics change) shows what each layer
        gets.

    Returns
    -------
    list of str
        The names of the layers that fail, relative to ``model``.

    Examples
    --------
    >>> import torch
    >>> from sktransfer.training.heads import BackboneWithHead
    >>> body = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.AdaptiveAvgPool2d(1),
    ...                      nn.Flatten(), nn.BatchNorm1d(2))
    >>> model = BackboneWithHead(body, nn.Linear(2, 1))
    >>> groups = [("0", ["0.weight", "0.bias"]), ("1", ["1.weight", "1.bias"]),
    ...           ("4", ["4.weight", "4.bias"])]
    >>> norms_needing_two_samples(model, groups, 0, torch.zeros(1, 1, 8, 8))
    ['backbone.4']
    """
    freeze_groups(model, param_groups, n_frozen, fixed)
    frozen = {id(norm) for norm in model.frozen_norms}
    single = []

    def record(name):
        def hook(module, args):
            if args[0][0].numel() == args[0].shape[1]:  # one value per channel
                single.append(name)
        return hook

    handles = [module.register_forward_pre_hook(record(name))
               for name, module in model.named_modules()
               if isinstance(module, nn.modules.batchnorm._BatchNorm) and id(module) not in frozen]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
        # Training applies its own freezing at each epoch's start.
        freeze_groups(model, param_groups, 0, fixed)
        model.train(was_training)
    return single


def unfreeze_all(model, fixed=frozenset()):
    """Make every parameter of ``model`` (a ``BackboneWithHead``) trainable again
    (after training ends), but the backbone's ``fixed`` ones."""
    for name, param in model.backbone.named_parameters():
        param.requires_grad_(name not in fixed)
    for param in model.head.parameters():
        param.requires_grad_(True)

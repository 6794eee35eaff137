"""Optimizer, per-group learning rates and learning-rate schedules for fine-tuning.

- Discriminative learning rates: with G backbone parameter groups ordered
  input -> output, group ``i`` (0-based) trains at
  ``lr * backbone_lr_mult ** (G - i)`` and the head at ``lr``. With a
  multiplier below 1 the last backbone group gets ``lr * mult``, the first
  ``lr * mult ** G``: the generic early layers change least.
- Weight decay applies to weight matrices and convolution kernels only, not to
  biases and normalization parameters (every parameter with fewer than two
  dimensions), where shrinking towards zero only hurts.
- Schedules are stepped once per batch and span the epochs of one call to
  ``fit`` or ``partial_fit``.
"""

import math
import torch

OPTIMIZERS = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
}
SCHEDULES = ("onecycle", "cosine", None)


def resolve_optimizer(optimizer):
    """Return ``(optimizer class, default keyword arguments)`` for ``optimizer``.

    ``"sgd"`` uses Nesterov momentum 0.9, the usual choice for fine-tuning.

    Examples
    --------
    >>> resolve_optimizer("adamw")
    (<class 'torch.optim.adamw.AdamW'>, {})
    """
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={optimizer!r} is not one of {sorted(OPTIMIZERS)}; "
                             "pass one of those names or a torch.optim.Optimizer class.")
        kwargs = {"momentum": 0.9, "nesterov": True} if optimizer == "sgd" else {}
        return OPTIMIZERS[optimizer], kwargs
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        return optimizer, {}
    raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)} or a "
                     f"torch.optim.Optimizer class; got {optimizer!r}")


def param_groups(model, backbone_groups, lr, backbone_lr_mult=1.0, weight_decay=0.0):
    """The optimizer's parameter groups for ``model`` (a ``BackboneWithHead``).

    Parameters
    ----------
    model : BackboneWithHead
    backbone_groups : list of (str, list of str)
        The backbone's groups ordered input -> output, parameter names
        relative to ``model.backbone``. Parameters in no group train with
        the first group's rate.
    lr : float
        The head's learning rate.
    backbone_lr_mult : float, default=1.0
        Per-group factor: group ``i`` of ``G`` gets ``lr * mult ** (G - i)``.
    weight_decay : float, default=0.0
        Decay for parameters with two or more dimensions.

    Returns
    -------
    list of dict
        Torch parameter groups with ``params``, ``lr``, ``weight_decay``, a
        ``name`` and the ``base_lr`` schedules restart from.

    Examples
    --------
    >>> from torch import nn
    >>> from sktransfer.training.heads import BackboneWithHead
    >>> model = BackboneWithHead(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)),
    ...                          nn.Linear(2, 1))
    >>> groups = [("0", ["0.weight", "0.bias"]), ("1", ["1.weight", "1.bias"])]
    >>> [(g["name"], g["lr"], g["weight_decay"])
    ...  for g in param_groups(model, groups, 1.0, 0.5, 0.01)]  # doctest: +NORMALIZE_WHITESPACE
    [('backbone.0', 0.25, 0.01), ('backbone.0.no_decay', 0.25, 0.0),
     ('backbone.1', 0.5, 0.01), ('backbone.1.no_decay', 0.5, 0.0),
     ('head', 1.0, 0.01), ('head.no_decay', 1.0, 0.0)]
    """
    params = dict(model.backbone.named_parameters())
    n_groups = len(backbone_groups)
    assigned = {}
    for i, (_, names) in enumerate(backbone_groups):
        for name in names:
            assigned.setdefault(name, i)
    ordered = [[] for _ in range(n_groups)]
    for name, param in params.items():
        ordered[assigned.get(name, 0)].append(param)
    specs = [(f"backbone.{name or '<root>'}", ordered[i],
              lr * backbone_lr_mult ** (n_groups - i))
             for i, (name, _) in enumerate(backbone_groups)]
    specs.append(("head", list(model.head.parameters()), lr))

    groups = []
    for name, group_params, group_lr in specs:
        decay = [p for p in group_params if p.ndim >= 2]
        no_decay = [p for p in group_params if p.ndim < 2]
        for suffix, members, wd in (("", decay, weight_decay), (".no_decay", no_decay, 0.0)):
            if members:
                groups.append({"params": members, "lr": group_lr, "base_lr": group_lr,
                               "weight_decay": wd, "name": name + suffix})
    return groups


def one_cycle(step, total, warmup=0.25, div=25.0, final_div=1e4):
    """The one-cycle multiplier of the base rate after ``step`` of ``total`` steps.

    A cosine warm-up from ``1/div`` to 1 over the first ``warmup`` share of
    the steps, then a cosine decay to ``1/(div * final_div)`` (the shape of
    ``torch.optim.lr_scheduler.OneCycleLR``, defined for any number of steps).

    Examples
    --------
    >>> [round(one_cycle(s, 8), 3) for s in (0, 2, 8)]
    [0.04, 1.0, 0.0]
    """
    n_warm = max(1, round(warmup * total))
    start, end = 1.0 / div, 1.0 / (div * final_div)
    if step < n_warm:
        return start + (1.0 - start) * (1 - math.cos(math.pi * step / n_warm)) / 2
    progress = min(1.0, (step - n_warm) / max(1, total - n_warm))
    return end + (1.0 - end) * (1 + math.cos(math.pi * progress)) / 2


def cosine(step, total):
    """The cosine-decay multiplier: 1 at the first step, 0 after ``total`` steps.

    Examples
    --------
    >>> [round(cosine(s, 4), 3) for s in (0, 2, 4)]
    [1.0, 0.5, 0.0]
    """
    return (1 + math.cos(math.pi * min(step, total) / total)) / 2


def constant(step, total):
    """The multiplier of a constant rate (``schedule=None``): always 1."""
    return 1.0

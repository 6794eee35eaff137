"""Per-sample weights of the training loss: ``sample_weight`` checked, and the weighted loss.

The fine-tuners' loss is a weighted mean over each batch,
``sum(w_i * l_i) / sum(w_i * c_i)``, where ``l_i`` is sample ``i``'s loss and
``c_i`` its class weight (1 without ``class_weight``; PyTorch's
``CrossEntropyLoss(weight=...)`` already multiplies ``l_i`` by it). This is
how PyTorch normalizes class weights, extended to sample weights, with three
properties users rely on:

- weights ``w`` and ``1000 * w`` train the same model (the scale cancels);
- weights of all ones train exactly the unweighted model;
- on one batch holding all the samples, integer weights equal duplicated
  rows and a zero weight equals the row removed.

A batch whose weights are all zero adds a loss of 0 (no gradient, no NaN).
"""

import numbers

import numpy as np
import torch
from torch import nn

from ..inputs import WeightedTargets, plain_targets


def check_sample_weight(sample_weight, n_samples, name="sample_weight"):
    """``sample_weight`` as a float32 array of ``n_samples`` non-negative weights, or None.

    A scalar is one weight for every sample, as in scikit-learn.

    Parameters
    ----------
    sample_weight : array-like of shape (n_samples,), scalar or None
    n_samples : int
    name : str, default="sample_weight"
        The parameter named in errors.

    Returns
    -------
    ndarray of shape (n_samples,), float32, or None

    Raises
    ------
    ValueError
        For a wrong shape or length, NaN or infinite, negative or all-zero
        weights.

    Examples
    --------
    >>> check_sample_weight([1, 0, 2], 3).tolist()
    [1.0, 0.0, 2.0]
    >>> check_sample_weight(2.0, 2).tolist()
    [2.0, 2.0]
    >>> check_sample_weight([1, -1], 2)
    Traceback (most recent call last):
    ...
    ValueError: sample_weight must be non-negative; 1 of 2 weights are negative (the first at index 1)
    """
    if sample_weight is None:
        return None
    if isinstance(sample_weight, numbers.Number) and not isinstance(sample_weight, bool):
        sample_weight = np.full(n_samples, sample_weight, dtype=np.float64)
    try:
        w = np.asarray(sample_weight, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers; got {type(sample_weight).__name__} "
                         f"{sample_weight!r:.60}") from None
    if w.ndim != 1:
        raise ValueError(f"{name} must be 1-D, one weight per sample; got shape {w.shape}")
    if len(w) != n_samples:
        raise ValueError(f"{name} has {len(w)} weights but X has {n_samples} samples")
    bad = ~np.isfinite(w)
    if bad.any():
        raise ValueError(f"{name} must be finite; {int(bad.sum())} of {n_samples} weights "
                         f"are NaN or infinite (the first at index {int(np.argmax(bad))})")
    negative = w < 0
    if negative.any():
        raise ValueError(f"{name} must be non-negative; {int(negative.sum())} of {n_samples} "
                         f"weights are negative (the first at index {int(np.argmax(negative))})")
    if not (w > 0).any():
        raise ValueError(f"{name} is zero for every sample: there is nothing to train on")
    return w.astype(np.float32)


def with_weights(target, weight):
    """``target`` with its weights (a :class:`~sktransfer.inputs.WeightedTargets`), or as it is.

    Examples
    --------
    >>> y = np.array([0, 1])
    >>> with_weights(y, None) is y, with_weights(y, np.ones(2)).weight.tolist()
    (True, [1.0, 1.0])
    """
    return target if weight is None else WeightedTargets(target, weight)


def weights_of(target):
    """The weights a target array carries, or None (see :func:`with_weights`)."""
    return target.weight if isinstance(target, WeightedTargets) else None


def training_data_digest(target):
    """One array of the targets and weights of a fit: what every rank must agree on."""
    values = np.ascontiguousarray(plain_targets(target))
    weight = weights_of(target)
    if weight is None:
        return values
    return np.concatenate([values.astype(np.float64).ravel(), weight.astype(np.float64)])


class WeightedLoss(nn.Module):
    """A loss module that weights each sample when its targets come with weights.

    Batches from a data set with ``sample_weight`` bring their targets as
    ``{"target": tensor, "weight": tensor}``; others as a plain tensor, for
    which this is exactly ``criterion``.

    Parameters
    ----------
    criterion : torch.nn.Module
        A loss that reduces by the mean: ``CrossEntropyLoss`` (its class
        weights are kept, and normalized as PyTorch does),
        ``BCEWithLogitsLoss``, ``MSELoss``.

    Examples
    --------
    >>> loss = WeightedLoss(nn.MSELoss())
    >>> pred, target = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])
    >>> float(loss(pred, target)), float(loss(pred, {"target": target,
    ...                                              "weight": torch.tensor([3.0, 1.0])}))
    (5.0, 3.0)
    """

    def __init__(self, criterion):
        super().__init__()
        self.criterion = criterion

    def forward(self, y_pred, y_true):
        if not isinstance(y_true, dict):
            return self.criterion(y_pred, y_true)
        target, weight = y_true["target"], y_true["weight"].to(y_pred.dtype)
        per_sample = self.per_sample(y_pred, target)
        norm = weight
        class_weight = getattr(self.criterion, "weight", None)
        if isinstance(self.criterion, nn.CrossEntropyLoss) and class_weight is not None:
            norm = weight * class_weight.to(weight.dtype)[target]
        total = norm.sum()
        # A batch of zero weights: a loss of 0 (0 / 1), not 0 / 0.
        return (weight * per_sample).sum() / torch.where(total > 0, total,
                                                         torch.ones_like(total))

    def normalizer(self, y_true):
        """The denominator of a batch's mean loss: its samples, or their total weight.

        ``sum(w_i * c_i)`` with weights (``c_i`` the class weight),
        ``sum(c_i)`` for class-weighted cross-entropy without them, else the
        number of samples: the mean loss times this is the batch's summed
        loss, which gradient accumulation adds over batches.
        """
        target = y_true["target"] if isinstance(y_true, dict) else y_true
        norm = (y_true["weight"].detach().double().cpu() if isinstance(y_true, dict)
                else torch.ones(len(target), dtype=torch.float64))
        class_weight = getattr(self.criterion, "weight", None)
        if isinstance(self.criterion, nn.CrossEntropyLoss) and class_weight is not None:
            norm = norm * class_weight.detach().double().cpu()[target.cpu()]
        return float(norm.sum())

    def per_sample(self, y_pred, target):
        """Each sample's loss (class weights applied), averaged over its outputs."""
        reduction = self.criterion.reduction
        self.criterion.reduction = "none"
        try:
            losses = self.criterion(y_pred, target)
        finally:
            self.criterion.reduction = reduction
        return losses.reshape(len(losses), -1).mean(1) if losses.ndim > 1 else losses

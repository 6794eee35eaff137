"""The samples early stopping holds out: a seeded, optionally stratified split."""

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from ..inputs import plain_targets
from .net import Rows


def holdout_split(samples, validation_fraction, stratify=None):
    """Training and validation :class:`~sktransfer.training.net.Rows` of ``samples``.

    The split's seed is drawn from torch's (seeded) random stream, so it
    follows the fit's ``random_state``. Weights (``sample_weight``) stay with
    their rows.

    Parameters
    ----------
    samples : Samples
        With targets (``samples.y``).
    validation_fraction : float
        The share held out: ``round(fraction * n)`` samples, at least 1.
    stratify : callable, optional
        ``stratify(targets, n_valid)``: the labels to stratify by, or None
        for an unstratified split (regression, multilabel targets, classes
        too small to split).

    Returns
    -------
    train, valid : Rows

    Raises
    ------
    ValueError
        Where holding out would leave no training sample.

    Examples
    --------
    >>> from sktransfer.inputs import Samples
    >>> train, valid = holdout_split(Samples(np.zeros((10, 2)), "tensor", np.arange(10)), 0.2)
    >>> len(train), len(valid)
    (8, 2)
    """
    n = len(samples)
    n_valid = max(1, int(round(validation_fraction * n)))
    if n - n_valid < 1:
        raise ValueError(f"early_stopping holds out validation_fraction={validation_fraction} "
                         f"of the data, which leaves no training sample out of {n}; give "
                         "more samples or set early_stopping=None.")
    labels = None if stratify is None else stratify(plain_targets(samples.y), n_valid)
    seed = int(torch.randint(0, 2**31 - 1, ()).item())  # drawn from the seeded RNG
    train_idx, valid_idx = train_test_split(np.arange(n), test_size=n_valid,
                                            random_state=seed, stratify=labels)
    return Rows(samples, np.sort(train_idx)), Rows(samples, np.sort(valid_idx))

"""The ``sample_domain`` convention: which rows are labelled, which are the target's.

The convention is skada's: ``sample_domain`` holds one nonzero integer per
sample, positive for source samples and negative for target ones; a target
sample without a label has ``y = -1`` (classification) or NaN (regression).
The fine-tuners' ``fit``, their ``predict`` and the domain-aware scorers
(:mod:`sktransfer.scorers`) all read it through this module, which takes
plain values and reads no estimator.
"""

import numpy as np


def unlabelled_rows(y, regression):
    """Where ``y`` marks a sample as unlabelled: -1 (classification) or all-NaN (regression)."""
    y = np.asarray(y)
    if regression:
        if y.dtype.kind not in "fc":
            y = y.astype(np.float64)
        isnan = np.isnan(y)
        return isnan.reshape(len(y), -1).all(axis=1)
    if y.dtype.kind in "iuf":
        return y == -1
    if y.dtype.kind == "O":
        return np.array([isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                         and v == -1 for v in y], dtype=bool)
    return np.zeros(len(y), dtype=bool)


class DomainSplit:
    """Which rows of a fit are labelled, and which are the target domain's.

    Built by :func:`split_domains`. ``labelled`` and ``target`` are index
    arrays (``target`` None without adaptation).
    """

    def __init__(self, n, labelled, target):
        self.n = n
        self.labelled = labelled
        self.target = target

    def fill(self, encoded):
        """The encoded labels of the labelled rows, spread over all rows (zeros elsewhere)."""
        if len(self.labelled) == self.n:
            return encoded
        full = np.zeros((self.n,) + encoded.shape[1:], dtype=encoded.dtype)
        full[self.labelled] = encoded
        return full

    def labelled_samples(self, samples):
        """The labelled rows of ``samples``: the supervised loss's (and validation's)."""
        return samples if len(self.labelled) == self.n else samples.subset(self.labelled)

    def target_rows(self, samples):
        """The target domain's rows of ``samples`` (None without adaptation)."""
        return None if self.target is None else samples.subset(self.target)


def check_prediction_domain(sample_domain, X):
    """Check the ``sample_domain`` a domain-aware scorer passes to ``predict``.

    Predictions do not depend on the domain; for an in-memory ``X``, a value
    that could not mark its rows by skada's convention is refused rather
    than ignored (a lazy Dask ``X`` has no length to check it against).
    """
    if sample_domain is not None:
        check_domain(np.ravel(sample_domain), len(X))


def check_domain(sample_domain, n):
    """``sample_domain`` as a 1-D integer array of ``n`` nonzero values (skada's convention)."""
    domain = np.asarray(sample_domain)
    if domain.ndim != 1 or len(domain) != n:
        raise ValueError(f"sample_domain must hold one value per sample: {n} samples, "
                         f"sample_domain of shape {domain.shape}.")
    if domain.dtype.kind not in "iu" or np.any(domain == 0):
        raise ValueError("sample_domain must hold nonzero integers: positive for source "
                         "samples, negative for target samples (skada's convention).")
    return domain


def split_domains(y, sample_domain, regression, *, adaptation, methods, name):
    """Check ``y`` and ``sample_domain`` against ``adaptation``; the rows' roles.

    Without ``sample_domain`` and without adaptation, every row is labelled
    (a label -1 is a class, as in any classifier). Otherwise rows with
    ``y = -1`` / NaN are unlabelled target samples, and ``sample_domain``
    (when given) says which rows are the target's (negative values).

    Parameters
    ----------
    y : array-like or None
    sample_domain : array-like or None
    regression : bool
        Whether an unlabelled row is marked by NaN (else by -1).
    adaptation : str or None
        The adaptation method (the fine-tuner's ``adaptation`` parameter).
    methods : tuple of str
        The methods ``adaptation`` may name, for the message that suggests one.
    name : str
        The class name of the model being fitted, for messages.

    Returns
    -------
    DomainSplit, y_labelled

    Examples
    --------
    >>> import numpy as np
    >>> split, y = split_domains(np.array([0, 1, -1]), None, False, adaptation="coral",
    ...                          methods=("coral",), name="FineTunedClassifier")
    >>> split.labelled, split.target, y
    (array([0, 1]), array([2]), array([0, 1]))
    """
    if y is None:
        raise ValueError(f"{name} requires y to be passed, but the target y is None.")
    y_arr = np.asarray(y)
    n = len(y_arr)
    method = adaptation
    if method is None and sample_domain is None:
        return DomainSplit(n, np.arange(n), None), y
    unlabelled = unlabelled_rows(y_arr, regression)
    if sample_domain is None:
        target = unlabelled
    else:
        target = check_domain(np.ravel(sample_domain), n) < 0
        if np.any(unlabelled & ~target):
            raise ValueError(f"{int(np.sum(unlabelled & ~target))} source samples "
                             "(sample_domain > 0) have no label (y = -1 or NaN); every "
                             "source sample needs one.")
    missing = "y = -1" if not regression else "y = NaN"
    if method is None:
        if unlabelled.any():
            raise ValueError(f"{int(unlabelled.sum())} samples are unlabelled ({missing}), "
                             "but adaptation=None trains on labels only; set adaptation to "
                             f"one of {methods} to use them, or drop them.")
        return DomainSplit(n, np.arange(n), None), y
    if not target.any():
        raise ValueError(f"adaptation={method!r} needs samples of the target domain: give "
                         f"them with {missing} (unlabelled) or sample_domain < 0.")
    labelled = np.flatnonzero(~unlabelled)
    if len(labelled) == 0:
        raise ValueError("no sample has a label: adaptation needs labelled source samples.")
    return DomainSplit(n, labelled, np.flatnonzero(target)), y_arr[labelled]

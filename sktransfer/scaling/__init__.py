"""Embed and predict at cluster scale: lazy Dask collections in, lazy collections out.

The estimators' ``transform``, ``predict`` and ``predict_proba`` hand a Dask
collection (array, DataFrame, Series or bag) to :func:`lazy_call`, which
maps the estimator's own method over its partitions and returns the
matching lazy collection. The fitted estimator travels to each worker once
and stays there (:mod:`.shipping`); the task graph holds a reference to it,
never its weights (:mod:`.collections`).

This package imports no Dask at import time, so ``import sktransfer`` does
not either: :func:`is_lazy_collection` looks for a Dask collection only when
Dask has been imported already (a Dask collection cannot exist otherwise).
It imports no estimator; the estimators import it.
"""

import sys

import numpy as np

__all__ = ["LazyOutput", "is_lazy_collection", "lazy_call", "release_models", "worker_models"]


class LazyOutput:
    """What one method of a fitted estimator returns per sample.

    Parameters
    ----------
    width : int or None
        Columns of the output; None for one value per sample (labels, a
        single regression target).
    dtype : numpy dtype
    names : sequence, optional
        Column names of a DataFrame output (feature names, classes); the
        columns are numbered when not given. For a 1-D output, the name of
        the Series.

    Examples
    --------
    >>> import numpy as np
    >>> LazyOutput(3, np.float32).shape_of(5)
    (5, 3)
    """

    def __init__(self, width, dtype, names=None):
        self.width = None if width is None else int(width)
        self.dtype = dtype
        self.names = names

    def __dask_tokenize__(self):
        names = None if self.names is None else tuple(np.asarray(self.names).tolist())
        return ("sktransfer-output", self.width, str(np.dtype(self.dtype)), names)

    def shape_of(self, n):
        """The output's shape for ``n`` samples."""
        return (n,) if self.width is None else (n, self.width)


def is_lazy_collection(X):
    """Whether ``X`` is a Dask collection, checked without importing Dask.

    Examples
    --------
    >>> import numpy as np
    >>> is_lazy_collection(np.zeros(3))
    False
    """
    dask = sys.modules.get("dask")
    return dask is not None and dask.is_dask_collection(X)


def lazy_call(estimator, method, X, output):
    """``estimator.<method>`` mapped lazily over the partitions of the Dask collection ``X``.

    See :func:`sktransfer.scaling.collections.map_collection`.
    """
    from .collections import map_collection

    return map_collection(estimator, method, X, output)


def worker_models():
    """The models this process holds for Dask tasks; see :func:`.shipping.worker_models`."""
    from .shipping import worker_models as held

    return held()


def release_models():
    """Free the models this process holds for Dask tasks; see :func:`.shipping.release_models`."""
    from .shipping import release_models as release

    return release()

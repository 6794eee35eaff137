"""An estimator's method mapped over the partitions of a Dask collection.

Each kind of collection comes back as the matching lazy one, with its
output width and dtype known up front, so that ``map_blocks``, dask-ml's
estimators and DataFrame operations compose with it:

- a Dask array of samples (images ``(N, H, W[, C])`` or ``(N, C, H, W)``,
  tensors ``(N, F)``, texts or paths ``(N,)``) gives a Dask array ``(N, D)``
  (or ``(N,)`` for labels), chunked like ``X`` along the samples;
- a Dask Series or DataFrame (a column of paths or texts, feature columns
  for a tensor backbone) gives a Dask DataFrame (or a Series for labels)
  with ``X``'s index and divisions;
- a Dask bag of samples gives a bag of per-sample results.

Every partition is computed by the estimator's own in-memory method, on
the worker's copy of the model (:mod:`.shipping`), so a partition's result
is the one the estimator gives for those samples in memory.
"""

import sys

import numpy as np

from .shipping import current_client, ship


def map_collection(estimator, method, X, output):
    """``estimator.<method>`` over the partitions of ``X``, as a lazy collection.

    Parameters
    ----------
    estimator : fitted estimator
    method : str
        ``"transform"``, ``"predict"`` or ``"predict_proba"``.
    X : dask Array, DataFrame, Series or Bag
    output : sktransfer.scaling.LazyOutput
        The width and dtype of what ``method`` returns per sample.

    Returns
    -------
    dask Array, DataFrame, Series or Bag
        Computed by the current Dask client when there is one (the model
        travels to each worker once), else by Dask's local scheduler in this
        process, on ``estimator`` itself: refitting it before the result is
        computed changes the result.

    Raises
    ------
    TypeError
        For a Dask collection of another kind (a Delayed, a scalar).
    ValueError
        For a 0-dimensional Dask array.
    """
    token = f"{type(estimator).__name__.lower()}-{method}"
    da, dd, db = (sys.modules.get(f"dask.{name}") for name in ("array", "dataframe", "bag"))
    if da is not None and isinstance(X, da.Array):
        return _map_array(ship(estimator, current_client()), method, X, output, token)
    if dd is not None and isinstance(X, (dd.DataFrame, dd.Series)):
        return _map_frame(ship(estimator, current_client()), method, X, output, token)
    if db is not None and isinstance(X, db.Bag):
        return X.map_partitions(_apply_items, ship(estimator, current_client()), method,
                                token=token)
    raise TypeError(f"{type(estimator).__name__}.{method} maps over a Dask array, DataFrame, "
                    f"Series or bag; got a Dask {type(X).__name__}. Turn it into one of "
                    f"those (e.g. dask.array.from_delayed, dask.bag.from_delayed) or "
                    f"compute it first.")


def _map_array(model, method, X, output, token):
    if X.ndim == 0:
        raise ValueError(f"X is a 0-dimensional Dask array (one value); {method} takes an "
                         f"array of samples along its first axis.")
    if any(len(chunks) > 1 for chunks in X.chunks[1:]):
        # A sample must not span blocks: one block per row of samples.
        X = X.rechunk({axis: -1 for axis in range(1, X.ndim)})
    chunks = (X.chunks[0],) if output.width is None else (X.chunks[0], (output.width,))
    axes = {}
    if X.ndim > len(chunks):
        axes["drop_axis"] = list(range(len(chunks), X.ndim))
    elif X.ndim < len(chunks):
        axes["new_axis"] = [1]
    return X.map_blocks(_apply_block, model, method, output, chunks=chunks, dtype=output.dtype,
                        meta=np.empty(output.shape_of(0), output.dtype), token=token, **axes)


def _apply_block(block, model, method, output):
    if len(block) == 0:
        return np.empty(output.shape_of(0), output.dtype)
    return np.asarray(getattr(model.estimator, method)(block), dtype=output.dtype)


def _map_frame(model, method, X, output, token):
    import pandas as pd

    meta = _as_frame(np.empty(output.shape_of(0), output.dtype), pd.RangeIndex(0), output)
    return X.map_partitions(_apply_partition, model, method, output, meta=meta, token=token)


def _apply_partition(part, model, method, output):
    if len(part) == 0:
        result = np.empty(output.shape_of(0), output.dtype)
    else:
        result = np.asarray(getattr(model.estimator, method)(part), dtype=output.dtype)
    return _as_frame(result, part.index, output)


def _as_frame(values, index, output):
    import pandas as pd

    if output.width is None:
        return pd.Series(values, index=index, name=output.names)
    columns = output.names if output.names is not None else range(output.width)
    return pd.DataFrame(values, index=index, columns=list(columns))


def _apply_items(items, model, method):
    items = list(items)
    if not items:
        return []
    result = np.asarray(getattr(model.estimator, method)(items))
    return result.tolist() if result.ndim == 1 else list(result)

"""rank_backbones: which backbone suits a task, scored before any training."""

import copy
import inspect
import time

import numbers

import numpy as np
import pandas as pd
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import _num_samples

from ._utils.device import check_device
from ._utils.validation import Boolean, Checked, Interval, is_fitted, validate_args
from .features import PretrainedFeatureTransformer
from .transferability import knn_score, linear_probe_score, logme

#: Every metric maps (features, y, regression, cv) to a score, higher is better.
METRICS = {
    "logme": lambda F, y, regression, cv: logme(F, y, regression=regression),
    "knn": lambda F, y, regression, cv: knn_score(F, y, cv=cv, regression=regression),
    "linear_probe": lambda F, y, regression, cv: linear_probe_score(
        F, y, cv=cv, regression=regression),
}


#: What rank_backbones' arguments take, checked before anything is embedded.
_ARGUMENTS = {
    "regression": [None, Boolean()],
    "batch_size": [Interval(numbers.Integral, 1)],
    "device": [Checked(check_device)],
    "verbose": [Interval(numbers.Integral, 0), Boolean()],
    "sampling_rate": [None, Interval(numbers.Integral, 1)],
}


def rank_backbones(candidates, X, y, *, names=None, metrics=("logme", "knn", "linear_probe"),
                   rank_by="logme", cv=5, regression=None, cache=None, batch_size=32,
                   device="auto", verbose=0, sampling_rate=None):
    """Embed ``X`` with each candidate backbone and rank them by transferability.

    Each candidate embeds the target samples once (frozen, as
    :class:`PretrainedFeatureTransformer` does), and each metric scores the
    embedding against ``y``: no fine-tuning, so ranking a handful of
    backbones costs about one ``transform`` each.

    Parameters
    ----------
    candidates : list
        Backbones: anything ``PretrainedFeatureTransformer(backbone=...)``
        accepts (``"torchvision:resnet50"``, ``"timm:..."``, ``"hf:..."``, an
        ``nn.Module``, a factory, a fitted sktransfer estimator), or a
        ``PretrainedFeatureTransformer``, fitted or not, to choose its
        weights, layers, pooling or image size.
    X : array-like, list of paths, PIL images or strings
        The target task's samples, of the kind the backbones take.
    y : array-like of shape (n_samples,) or (n_samples, n_targets)
        Class labels or regression targets.
    names : list of str, optional
        One per candidate. By default, the spec string, the module's class
        name or the factory's name (with ``weights=...`` when not the
        default), made unique with a ``" (2)"``-style suffix.
    metrics : sequence of {"logme", "knn", "linear_probe"}, default=all three
        Scores to compute (see :mod:`sktransfer.transferability`); every
        one is higher for a better backbone.
    rank_by : str, default="logme"
        The metric that orders the rows; one of ``metrics``. With few
        labelled samples (tens per class) prefer ``"knn"``: LogME is then
        unreliable.
    cv : int or cross-validation splitter, default=5
        Folds for the ``"knn"`` and ``"linear_probe"`` scores; an integer
        gives the same shuffled folds for every candidate.
    regression : bool, optional
        Score continuous targets (R^2, LogME on the target columns) rather
        than classes. ``None`` infers it from ``y``
        (:func:`~sklearn.utils.multiclass.type_of_target`: ``"continuous"``
        means regression).
    cache : str, os.PathLike, joblib.Memory or None, default=None
        Passed to ``PretrainedFeatureTransformer(cache=...)`` (also to a
        given transformer that has none): a second ranking of the same
        samples with the same backbones reads every embedding from disk.
    batch_size : int, default=32
        Samples per forward pass (for candidates that are not transformers).
    device : str, default="auto"
        Where to embed (for candidates that are not transformers).
    verbose : int, default=0
        1 prints one line per candidate; 2 also shows the embedding's
        progress bar.
    sampling_rate : int, optional
        For audio given as arrays, their rate in Hz (for candidates that are
        not transformers; each model resamples to its own rate). Files
        carry their own rate.

    Returns
    -------
    pandas.DataFrame
        One row per candidate, indexed by name, best first by ``rank_by``
        (ties keep the order given): a column per metric,
        ``"embed_seconds"`` (loading and embedding) and ``"n_features"``.

    Raises
    ------
    ValueError
        For no candidates, an unknown metric, a ``rank_by`` not among
        ``metrics``, ``names`` that do not match the candidates, or ``y`` of
        another length than ``X``.

    See Also
    --------
    sktransfer.transferability.logme, sktransfer.transferability.knn_score,
    sktransfer.transferability.linear_probe_score

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sklearn.datasets import load_digits
    >>> X, y = load_digits(return_X_y=True)
    >>> X = (X[:200] / 16).astype(np.float32)
    >>> ranking = rank_backbones(
    ...     [nn.Identity(), nn.Sequential(nn.Linear(64, 8), nn.Tanh())], X, y[:200],
    ...     names=["pixels", "random 8-d"], metrics=("knn", "logme"), rank_by="knn")
    >>> list(ranking.index), list(ranking.columns)
    (['pixels', 'random 8-d'], ['knn', 'logme', 'embed_seconds', 'n_features'])
    """
    validate_args(_ARGUMENTS, locals())
    candidates, metrics, names = _check_request(candidates, metrics, rank_by, names)
    y = np.asarray(y)
    n_samples = _num_samples(X)
    if len(y) != n_samples:
        raise ValueError(f"X has {n_samples} samples but y has {len(y)}")
    if regression is None:
        regression = type_of_target(y).startswith("continuous")

    rows = []
    for i, (name, candidate) in enumerate(zip(names, candidates), start=1):
        start = time.perf_counter()
        features = _embed(candidate, X, cache=cache, batch_size=batch_size, device=device,
                          verbose=verbose >= 2, sampling_rate=sampling_rate)
        seconds = time.perf_counter() - start
        scores = {m: METRICS[m](features, y, regression, cv) for m in metrics}
        rows.append({**scores, "embed_seconds": seconds, "n_features": features.shape[1]})
        if verbose:
            shown = ", ".join(f"{m}={v:.4g}" for m, v in scores.items())
            print(f"[rank_backbones] {i}/{len(names)} {name}: {features.shape[1]} features "
                  f"in {seconds:.1f}s; {shown}", flush=True)

    table = pd.DataFrame(rows, index=pd.Index(names, name="backbone"))
    # A stable sort keeps the given order among ties; NaN scores go last.
    return table.sort_values(rank_by, ascending=False, kind="stable", na_position="last")


def _check_request(candidates, metrics, rank_by, names):
    """Everything checkable before embedding: fail before the slow part."""
    candidates = list(candidates)
    if not candidates:
        raise ValueError("candidates is empty; pass at least one backbone")
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"unknown metric(s) {unknown}; choose among {sorted(METRICS)}")
    if rank_by not in metrics:
        raise ValueError(f"rank_by={rank_by!r} is not among the metrics computed "
                         f"{list(metrics)}")
    if names is None:
        names = _unique([_default_name(c) for c in candidates])
    else:
        names = [str(n) for n in names]
        if len(names) != len(candidates):
            raise ValueError(f"names has {len(names)} entries for {len(candidates)} "
                             "candidates")
        if len(set(names)) != len(names):
            raise ValueError(f"names must be unique; got {names}")
    return candidates, metrics, names


def _embed(candidate, X, *, cache, batch_size, device, verbose, sampling_rate):
    """Float32 features of ``X`` from one candidate."""
    if isinstance(candidate, PretrainedFeatureTransformer):
        # A shallow copy leaves the user's transformer as it was (no cache set
        # on it, no fit): fitting sets attributes on the copy only, and a
        # fitted backbone is shared, which transform only reads. Not clone(),
        # which would unfit an estimator given as its backbone.
        transformer = copy.copy(candidate)
        if cache is not None and transformer.cache is None:
            transformer.cache = cache
        if is_fitted(transformer, "backbone_"):
            return transformer.transform(X)
    else:
        transformer = PretrainedFeatureTransformer(
            backbone=candidate, batch_size=batch_size, device=device, verbose=verbose,
            cache=cache, sampling_rate=sampling_rate)
    return transformer.fit_transform(X)


def _default_name(candidate):
    """A readable label: a spec string, a class or factory name, and non-default weights."""
    if isinstance(candidate, PretrainedFeatureTransformer):
        name = _default_name(candidate.backbone)
        if candidate.weights != "DEFAULT":
            name += f" (weights={candidate.weights!r})"
        if candidate.layers:
            name += f" (layers={list(candidate.layers)})"
        return name
    if isinstance(candidate, str):
        return candidate
    if isinstance(candidate, type) or inspect.isfunction(candidate):
        return candidate.__name__  # a module class or a factory
    return type(candidate).__name__  # a module, or a fitted estimator


def _unique(names):
    """``names`` with repeats suffixed " (2)", " (3)", ... in order."""
    seen, out = {}, []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out

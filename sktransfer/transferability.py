"""How well frozen features suit a target task, before any training.

Three scores on an embedding ``(N, D)`` of the target samples, each higher
for a better fit:

- :func:`logme`: the log marginal likelihood (evidence) of Bayesian linear
  regression from the features to the labels, maximized over its two
  precisions (You et al., "LogME: Practical Assessment of Pre-trained Models
  for Transfer Learning", ICML 2021). No training, one eigendecomposition.
- :func:`knn_score`: k-nearest-neighbour accuracy (or R^2) under
  cross-validation.
- :func:`linear_probe_score`: a logistic (or ridge) regression on
  standardized features, under cross-validation.

:func:`sktransfer.rank_backbones` embeds a data set with several backbones and
tabulates these scores.
"""

import numbers

import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import KFold, StratifiedKFold, check_cv, cross_val_score
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import type_of_target

from ._utils.validation import Boolean, Interval, validate_args

#: Precisions are kept inside these bounds: a target the features fit exactly
#: (or do not touch at all) sends one of them to infinity, where the evidence
#: approaches its supremum; stopping here keeps every result finite.
_PRECISION_BOUNDS = (1e-100, 1e100)


#: What the scores' arguments take (checked before any computation).
_PROBE_ARGUMENTS = {"regression": [Boolean()]}
_LOGME_ARGUMENTS = {**_PROBE_ARGUMENTS, "tol": [Interval(numbers.Real, 0, closed="neither")],
                    "max_iter": [Interval(numbers.Integral, 1)]}
_KNN_ARGUMENTS = {**_PROBE_ARGUMENTS, "n_neighbors": [Interval(numbers.Integral, 1)]}


def logme(features, y, regression=False, *, tol=1e-10, max_iter=1000):
    """LogME: the maximum evidence of a Bayesian linear model on the features.

    For each target column ``t`` (the one-hot columns of the classes, or the
    columns of a regression target), the model is ``t = F w + noise`` with
    prior ``w ~ N(0, I / alpha)`` and noise ``N(0, I / beta)``; its log
    evidence, with ``F`` the features as given (no centering or scaling),
    ``N, D = F.shape`` and ``s_i`` the ``D`` eigenvalues of ``F^T F`` (zeros
    included), is::

        L = D/2 log a + N/2 log b - 1/2 sum_i log(a + b s_i)
            - b/2 ||F m - t||^2 - a/2 ||m||^2 - N/2 log(2 pi),
        m = b (a I + b F^T F)^-1 F^T t.

    LogME is ``max over a, b > 0 of L / N``, averaged over the columns. The
    maximum is found with MacKay's fixed-point updates
    (``gamma = sum_i b s_i / (a + b s_i)``, ``a = gamma / ||m||^2``,
    ``b = (N - gamma) / ||F m - t||^2``) on one eigendecomposition of the
    smaller of ``F^T F`` and ``F F^T``, so each iteration costs ``O(min(N, D))``
    per column.

    The value is invariant to scaling the features, and is comparable across
    backbones on the same target (higher is better), not across targets.

    Parameters
    ----------
    features : array-like of shape (n_samples, n_features)
        Embeddings of the target samples; finite.
    y : array-like of shape (n_samples,) or (n_samples, n_targets)
        Class labels, or regression targets when ``regression=True``.
    regression : bool, default=False
        Treat ``y`` as continuous targets (each column scored as it is)
        instead of class labels (one-hot encoded).
    tol : float, default=1e-10
        Stop when no precision changes by more than this, relatively.
    max_iter : int, default=1000
        Fixed-point iterations at most (a few dozen are usual).

    Returns
    -------
    float
        Mean log evidence per sample, averaged over the target columns.

    Raises
    ------
    ValueError
        For features that are not a finite 2-D numeric array, a ``y`` of
        another length, fewer than two classes, or continuous labels with
        ``regression=False``.

    Notes
    -----
    With few samples per class (tens rather than hundreds) the evidence is
    dominated by its complexity terms and LogME's ranking of backbones becomes
    unreliable; :func:`knn_score` is then the safer guide.

    Examples
    --------
    Features that separate the classes score higher than noise:

    >>> import numpy as np
    >>> rng = np.random.RandomState(0)
    >>> y = np.repeat([0, 1, 2], 30)
    >>> informative = np.eye(3)[y] + 0.1 * rng.randn(90, 3)
    >>> noise = rng.randn(90, 3)
    >>> bool(logme(informative, y) > logme(noise, y))
    True
    """
    validate_args(_LOGME_ARGUMENTS, locals())
    F = _check_features(features)
    targets = _target_columns(y, len(F), regression)
    spectrum = _spectral_projections(F, targets)
    evidence = _max_evidence(spectrum, len(F), tol=tol, max_iter=max_iter)
    return float(np.mean(evidence) / len(F))


def knn_score(features, y, *, n_neighbors=5, cv=5, regression=False, metric="euclidean"):
    """Cross-validated k-nearest-neighbour accuracy (or R^2) on the features.

    The cheapest score to trust: no training, no hyperparameters worth
    tuning, and in comparisons of transferability estimators, plain k-NN
    accuracy on frozen features has often been the most reliable predictor of
    how well a backbone transfers, especially with few labels.

    Parameters
    ----------
    features : array-like of shape (n_samples, n_features)
    y : array-like of shape (n_samples,) or (n_samples, n_targets)
        Class labels, or regression targets when ``regression=True``.
    n_neighbors : int, default=5
        Neighbours that vote; capped at the size of the smallest training fold.
    cv : int or cross-validation splitter, default=5
        An integer gives shuffled (stratified, for classes) folds drawn with a
        fixed seed, so every backbone is scored on the same splits; for
        classes, the number of folds is capped at the smallest class's size.
    regression : bool, default=False
        Score ``R^2`` of a :class:`~sklearn.neighbors.KNeighborsRegressor`
        instead of the accuracy of a classifier.
    metric : str, default="euclidean"
        Distance between embeddings (``"cosine"`` suits some text encoders).

    Returns
    -------
    float
        Mean accuracy (or ``R^2``) over the folds.

    See Also
    --------
    linear_probe_score : a linear model instead of neighbours.
    logme : no cross-validation at all.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> X, y = load_digits(return_X_y=True)
    >>> round(knn_score(X[:300], y[:300]), 2)
    0.98
    """
    validate_args(_KNN_ARGUMENTS, locals())
    F = _check_features(features)
    y = _check_y(y, len(F), regression)
    splitter = _splitter(cv, y, regression)
    train_size = len(F) - len(F) // splitter.get_n_splits()
    k = max(1, min(n_neighbors, train_size))
    model = (KNeighborsRegressor if regression else KNeighborsClassifier)(
        n_neighbors=k, metric=metric)
    return _cv_mean(model, F, y, splitter, regression)


def linear_probe_score(features, y, *, cv=5, regression=False):
    """Cross-validated linear-probe accuracy (or R^2) on standardized features.

    :class:`~sklearn.linear_model.LogisticRegression` (or
    :class:`~sklearn.linear_model.Ridge`) with default regularization after a
    :class:`~sklearn.preprocessing.StandardScaler`: the model feature transfer
    most often puts on a backbone. Robust like :func:`knn_score`, slower on
    wide features, and closer to what a linear head will reach.

    Parameters
    ----------
    features : array-like of shape (n_samples, n_features)
    y : array-like of shape (n_samples,) or (n_samples, n_targets)
    cv : int or cross-validation splitter, default=5
        As in :func:`knn_score`.
    regression : bool, default=False
        Score ``R^2`` of a ridge regression instead of classification accuracy.

    Returns
    -------
    float
        Mean accuracy (or ``R^2``) over the folds.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> X, y = load_digits(return_X_y=True)
    >>> round(linear_probe_score(X[:200], y[:200]), 2)
    0.97
    """
    validate_args(_PROBE_ARGUMENTS, locals())
    F = _check_features(features)
    y = _check_y(y, len(F), regression)
    splitter = _splitter(cv, y, regression)
    head = Ridge() if regression else LogisticRegression(max_iter=1000)
    return _cv_mean(make_pipeline(StandardScaler(), head), F, y, splitter, regression)


# -- LogME internals --------------------------------------------------------

def _spectral_projections(F, targets):
    """The spectrum of ``F`` and each target's energy along it.

    Returns ``s``, the ``k = min(N, D)`` leading eigenvalues of ``F^T F``
    (numerical zeros set to 0); ``p2`` of shape ``(k, C)``, with ``p2[j, c] =
    (v_j . F^T t_c)^2 = s_j (u_j . t_c)^2``; ``yy = ||t_c||^2``; and, when
    ``N <= D``, ``z2[j, c] = (u_j . t_c)^2`` over a complete basis of
    ``R^N`` (else None), from which residuals are computed without
    cancellation: with ``N <= D`` the features can fit the targets exactly,
    the residual then tends to 0 and its precision to infinity.

    The eigendecomposition is of the smaller Gram matrix in float64, a
    fraction of the cost of an SVD of ``F`` (``benchmarks/RESULTS.md``,
    "Ranking backbones"); eigenvalues below ``max(N, D) * eps * s_max``, lost to rounding, are set
    to 0, the cut numpy's ``matrix_rank`` makes.
    """
    n, d = F.shape
    if n > d:
        s, vecs = np.linalg.eigh(F.T @ F)
        p2, z2 = (vecs.T @ (F.T @ targets)) ** 2, None
    else:
        s, vecs = np.linalg.eigh(F @ F.T)
        z2 = (vecs.T @ targets) ** 2
    cut = max(n, d) * np.finfo(np.float64).eps * max(s.max(initial=0.0), 0.0)
    nonzero = s > cut
    s = np.where(nonzero, s, 0.0)
    if z2 is not None:
        p2 = s[:, None] * z2
    p2 = np.where(nonzero[:, None], p2, 0.0)
    return s, p2, np.sum(targets ** 2, axis=0), z2


def _evidence_terms(a, b, spectrum):
    """``gamma``, ``||m||^2`` and ``||F m - t||^2`` at precisions ``a, b`` (per column).

    ``a`` and ``b`` are ``(C,)``; ``spectrum`` is what
    :func:`_spectral_projections` returns. Without ``z2`` the residual is
    expanded as ``||t||^2 - sum_j b p2_j (2a + b s_j) / (a + b s_j)^2``,
    which needs no division by ``s_j``; it is floored at ``eps ||t||^2``,
    the accuracy it is computed to.
    """
    s, p2, yy, z2 = spectrum
    tiny = np.finfo(np.float64).tiny
    denom = a + b * s[:, None]
    gamma = np.sum(b * s[:, None] / denom, axis=0)
    m_norm2 = np.sum(b ** 2 * p2 / denom ** 2, axis=0)
    if z2 is not None:
        residual = np.sum((a / denom) ** 2 * z2, axis=0)
    else:
        residual = yy - np.sum(b * p2 * (2 * a + b * s[:, None]) / denom ** 2, axis=0)
    floor = np.finfo(np.float64).eps * yy
    return gamma, m_norm2, np.maximum(residual, np.maximum(floor, tiny))


def _max_evidence(spectrum, n, *, tol, max_iter):
    """Maximize each column's log evidence by MacKay's fixed point; return it."""
    s, _, yy, _ = spectrum
    tiny = np.finfo(np.float64).tiny
    low, high = _PRECISION_BOUNDS
    # Start where the noise explains the whole target and the prior weight
    # matches the mean eigenvalue: the same point for features of any scale.
    b = np.clip(n / np.maximum(yy, tiny), low, high)
    a = np.clip(b * max(float(np.mean(s)), tiny), low, high)
    for _ in range(max_iter):
        gamma, m_norm2, residual = _evidence_terms(a, b, spectrum)
        # Features orthogonal to the target (m = 0) want a -> infinity, where
        # the evidence reaches its supremum; the clip stops there, finite.
        new_a = np.clip(gamma / np.maximum(m_norm2, tiny), low, high)
        new_b = np.clip((n - gamma) / residual, low, high)
        change = max(np.max(np.abs(new_a - a) / a), np.max(np.abs(new_b - b) / b))
        a, b = new_a, new_b
        if change <= tol:
            break
    return _log_evidence(a, b, spectrum, n)


def _log_evidence(a, b, spectrum, n):
    """The log evidence of each column at precisions ``a, b``.

    ``D/2 log a - 1/2 sum_i log(a + b s_i)`` is computed as
    ``-1/2 sum_j log1p(b s_j / a)`` over the ``k`` leading eigenvalues: the
    ``D - k`` structural zeros cancel exactly, and the form stays accurate
    where ``b s_j`` is small against ``a``.
    """
    s = spectrum[0]
    _, m_norm2, residual = _evidence_terms(a, b, spectrum)
    complexity = -0.5 * np.sum(np.log1p(b * s[:, None] / a), axis=0)
    return (complexity + 0.5 * n * np.log(b) - 0.5 * b * residual - 0.5 * a * m_norm2
            - 0.5 * n * np.log(2 * np.pi))


# -- validation and cross-validation ------------------------------------------

def _check_features(features):
    """Features as a finite float64 ``(N, D)`` array, or a clear error."""
    try:
        F = np.asarray(features, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"features must be a numeric array of shape (n_samples, "
                         f"n_features); could not convert: {exc}") from None
    if F.ndim != 2:
        raise ValueError(f"features must be 2-D (n_samples, n_features); got shape {F.shape}")
    if F.shape[0] < 2 or F.shape[1] < 1:
        raise ValueError(f"features need at least 2 samples and 1 feature; got shape "
                         f"{F.shape}")
    if not np.all(np.isfinite(F)):
        bad = int(np.sum(~np.isfinite(F).all(axis=1)))
        raise ValueError(f"features must be finite; {bad} of {len(F)} rows hold NaN or "
                         "infinity")
    return F


def _check_y(y, n_samples, regression):
    """``y`` checked against the features' length and the task."""
    y = np.asarray(y)
    if y.ndim not in (1, 2) or len(y) != n_samples:
        raise ValueError(f"y must have one entry (row) per sample: {n_samples} features "
                         f"rows but y has shape {y.shape}")
    if regression:
        try:
            y = y.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError("regression=True needs numeric targets; got y of dtype "
                             f"{y.dtype}") from None
        if not np.all(np.isfinite(y)):
            raise ValueError("regression targets y must be finite")
        return y
    kind = type_of_target(y)
    if kind not in ("binary", "multiclass"):
        hint = (" Pass regression=True to score continuous targets."
                if kind.startswith("continuous") else "")
        raise ValueError(f"y must hold class labels (one column) for a classification "
                         f"score; its type is {kind!r}.{hint}")
    if len(np.unique(y)) < 2:
        raise ValueError("y holds a single class; scoring needs at least two")
    return y


def _target_columns(y, n_samples, regression):
    """The columns LogME fits: one-hot classes, or the regression targets."""
    y = _check_y(y, n_samples, regression)
    if regression:
        return y.reshape(n_samples, -1)
    _, codes = np.unique(y, return_inverse=True)
    return np.eye(codes.max() + 1)[codes]


def _splitter(cv, y, regression):
    """A splitter for ``cv``: shuffled folds with a fixed seed for an integer."""
    if not isinstance(cv, numbers.Integral):
        return check_cv(cv, y, classifier=not regression)
    if cv < 2:
        raise ValueError(f"cv must be at least 2 folds; got {cv}")
    if regression:
        return KFold(int(cv), shuffle=True, random_state=0)
    smallest = int(np.min(np.unique(y, return_counts=True)[1]))
    if smallest < 2:
        raise ValueError("cross-validation needs at least 2 samples of every class; "
                         f"the smallest class has {smallest}")
    return StratifiedKFold(min(int(cv), smallest), shuffle=True, random_state=0)


def _cv_mean(model, F, y, splitter, regression):
    scores = cross_val_score(model, F, y, cv=splitter,
                             scoring="r2" if regression else "accuracy")
    return float(np.mean(scores))

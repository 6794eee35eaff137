"""The domain-adaptation methods of :func:`sktransfer.compare_transfer`.

With ``source=(X_source, y_source)``, the study compares fine-tuning on the
labelled source samples (plus the split's labelled target samples) without
adaptation, ``"source_only"``, the baseline, against the same training with
each adaptation method, the target's samples entering unlabelled. Each
method is a :class:`WithSource` estimator, so that ``cross_validate`` splits
the target while the source and the unlabelled samples ride along.
"""

import itertools

import numpy as np
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone
from sklearn.utils.validation import check_is_fitted

from .._utils.signature import positional_deprecated

#: The built-in adaptation methods of compare_transfer (with ``source``).
ADAPTATION_METHODS = ("source_only", "coral", "mmd", "dann")


def adaptation_method(name, base, source, unlabelled):
    """The built-in adaptation method ``name`` on ``base`` (a fine-tuner), as a WithSource."""
    adaptation = None if name == "source_only" else name
    return WithSource(clone(base).set_params(adaptation=adaptation), X_source=source[0],
                      y_source=source[1], X_unlabelled=None if adaptation is None else unlabelled)


class WithSource(MetaEstimatorMixin, BaseEstimator):
    """Fit ``estimator`` on labelled source samples, the given target samples and unlabelled ones.

    ``fit(X, y)`` fits ``estimator`` on the source rows (``sample_domain``
    1), the target rows ``X`` with their labels, and ``X_unlabelled`` with
    ``y = -1`` (NaN for a regressor), all three marked target
    (``sample_domain`` -1); prediction and scoring are the estimator's.

    Parameters
    ----------
    estimator : FineTunedClassifier or FineTunedRegressor
    X_source, y_source : array-like
        The labelled source samples.
    X_unlabelled : array-like or None
        Target samples whose labels are not given; None for none (then
        ``sample_domain`` is not passed and the fit is plain fine-tuning).

    Attributes
    ----------
    estimator_ : estimator
        The fitted clone.
    """

    @positional_deprecated
    def __init__(self, estimator, *, X_source, y_source, X_unlabelled=None):
        self.estimator = estimator
        self.X_source = X_source
        self.y_source = y_source
        self.X_unlabelled = X_unlabelled

    def fit(self, X, y):
        """Fit on the source, ``(X, y)`` and the unlabelled samples.

        Parameters
        ----------
        X : array-like
            Labelled target samples.
        y : array-like

        Returns
        -------
        self
        """
        est = clone(self.estimator)
        y_source, y = np.asarray(self.y_source), np.asarray(y)
        if self.X_unlabelled is None:
            est.fit(_concat(self.X_source, X), np.concatenate([y_source, y]))
        else:
            n_unlabelled = len(self.X_unlabelled)
            missing = (np.full(n_unlabelled, np.nan) if est._score_name == "r2"
                       else np.full(n_unlabelled, -1, dtype=y.dtype if y.dtype.kind in "iu"
                                    else object))
            y_all = np.concatenate([y_source, y, missing])
            domain = np.r_[np.ones(len(y_source), int), -np.ones(len(y) + n_unlabelled, int)]
            est.fit(_concat(self.X_source, X, self.X_unlabelled), y_all, sample_domain=domain)
        self.estimator_ = est
        return self

    def predict(self, X):
        """The fitted estimator's predictions.

        Parameters
        ----------
        X : array-like

        Returns
        -------
        ndarray
        """
        check_is_fitted(self)
        return self.estimator_.predict(X)

    def predict_proba(self, X):
        """The fitted classifier's probabilities.

        Parameters
        ----------
        X : array-like

        Returns
        -------
        ndarray
        """
        check_is_fitted(self)
        return self.estimator_.predict_proba(X)

    def score(self, X, y):
        """The fitted estimator's score (accuracy or R^2) on ``(X, y)``.

        Parameters
        ----------
        X : array-like
        y : array-like

        Returns
        -------
        float
        """
        check_is_fitted(self)
        return self.estimator_.score(X, y)

    @property
    def classes_(self):
        return self.estimator_.classes_

    def __sklearn_tags__(self):
        tags = self.estimator.__sklearn_tags__()
        return tags


def _concat(*parts):
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate(parts)
    return list(itertools.chain.from_iterable(parts))

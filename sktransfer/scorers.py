"""Unsupervised scorers: choose an adaptation's settings without target labels.

:class:`PredictionEntropyScorer` scores a classifier by how confident its
predictions on the target domain's samples are (the negative mean entropy of
``predict_proba``; higher is better), so ``GridSearchCV`` can pick
``adaptation_weight`` from unlabelled target samples. It reads the target
rows as :meth:`~sktransfer.FineTunedClassifier.fit` does: ``sample_domain < 0``
when routed, else the rows with ``y == -1``.

Known failure modes: entropy rewards confidence, not correctness. A method
that collapses the target onto a few classes, or an adaptation weight so
large that it maps every target sample confidently to a wrong class, scores
well. Use it to compare settings of one method on one shift, and check its
choice on a few labelled target samples when you can (:doc:`/adaptation`
reports how often its choice matched the oracle's). skada's scorers
(``skada.metrics.PredictionEntropyScorer``, ``DeepEmbeddedValidation``,
``ImportanceWeightedScorer``) work with the fine-tuners too.
"""

import numpy as np
from sklearn.utils import _safe_indexing
from sklearn.utils.metadata_routing import MetadataRequest

from .training.adaptation import unlabelled_rows

__all__ = ["PredictionEntropyScorer"]


class PredictionEntropyScorer:
    """Negative mean prediction entropy on the target domain's samples (higher is better).

    A scorer for ``GridSearchCV(scoring=...)`` and ``cross_validate``: called
    as ``scorer(estimator, X, y, sample_domain=None)``. It requests
    ``sample_domain`` through scikit-learn's metadata routing (where routing
    is enabled); without it, the target rows are those with ``y == -1``.

    Parameters
    ----------
    eps : float, default=1e-12
        Floor of the probabilities inside the logarithm.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.dummy import DummyClassifier
    >>> X, y = np.zeros((4, 1)), np.array([0, 1, -1, -1])
    >>> clf = DummyClassifier(strategy="prior").fit(X[:2], y[:2])
    >>> round(PredictionEntropyScorer()(clf, X, y), 4)  # two equally likely classes: -ln 2
    -0.6931
    """

    def __init__(self, eps=1e-12):
        self.eps = eps

    def __call__(self, estimator, X, y=None, sample_domain=None):
        target = _target_rows(X, y, sample_domain)
        X_target = _safe_indexing(X, np.flatnonzero(target))
        proba = np.asarray(estimator.predict_proba(X_target), dtype=np.float64)
        entropy = -np.sum(proba * np.log(np.clip(proba, self.eps, None)), axis=1)
        return float(-entropy.mean())

    def get_metadata_routing(self):
        """Request ``sample_domain`` for scoring (scikit-learn's metadata routing).

        Returns
        -------
        MetadataRequest
        """
        request = MetadataRequest(owner=type(self).__name__)
        request.score.add_request(param="sample_domain", alias=True)
        return request

    def __repr__(self):
        return f"{type(self).__name__}(eps={self.eps!r})"


def _target_rows(X, y, sample_domain):
    n = len(X)
    if sample_domain is not None:
        target = np.asarray(sample_domain).ravel() < 0
    elif y is not None:
        target = unlabelled_rows(y, regression=False)
    else:
        target = np.ones(n, dtype=bool)
    if not target.any():
        raise ValueError("no target sample to score: give sample_domain (negative for the "
                         "target domain) or mark target samples with y = -1.")
    return target

"""Unsupervised scorers: choose an adaptation's settings without target labels.

Two scorers for ``GridSearchCV(scoring=...)`` and ``cross_validate``, both
reading the target rows as :meth:`~sktransfer.FineTunedClassifier.fit`
does: ``sample_domain < 0`` when routed, else the rows with ``y == -1``.

:class:`PredictionEntropyScorer` scores a classifier by how confident its
predictions on the target domain's samples are (the negative mean entropy of
``predict_proba``; higher is better). Known failure mode: entropy rewards
confidence, not correctness. A method that collapses the target onto a few
classes, or a weight so large that it maps every target sample confidently
to a wrong class, scores well; so does the least-adapted model on a mild
shift.

:class:`DeepEmbeddedValidation` (You et al., 2019) scores by the source
validation loss, each held-out source sample weighted by how target-like its
embedding is (a domain classifier's density ratio), with a control variate
that lowers the estimate's variance. It needs labelled source samples that
the model did not train on among the scored rows (a validation fold's).
Known failure modes: when the domains are far apart the weights concentrate
on a few source samples and the estimate is noisy; it cannot see a shift in
the labels' meaning.

:doc:`/adaptation` reports how often each one's choice matched the choice
made on target labels. Of skada's scorers (``skada.metrics``),
``PredictionEntropyScorer``, ``SoftNeighborhoodDensity`` and
``CircularValidation`` call the fine-tuners directly.
"""

import warnings

import numpy as np
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import _safe_indexing
from sklearn.utils.metadata_routing import MetadataRequest

from ._utils.signature import positional_deprecated
from .inputs.domains import check_domain, unlabelled_rows

__all__ = ["PredictionEntropyScorer", "DeepEmbeddedValidation"]


class _TargetAwareScorer:
    """Requests ``sample_domain`` at scoring time (scikit-learn's metadata routing)."""

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
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.endswith("_"))
        return f"{type(self).__name__}({args})"


class PredictionEntropyScorer(_TargetAwareScorer):
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

    @positional_deprecated
    def __init__(self, *, eps=1e-12):
        self.eps = eps

    def __call__(self, estimator, X, y=None, sample_domain=None):
        target = _target_rows(X, y, sample_domain)
        X_target = _safe_indexing(X, np.flatnonzero(target))
        proba = np.asarray(estimator.predict_proba(X_target), dtype=np.float64)
        entropy = -np.sum(proba * np.log(np.clip(proba, self.eps, None)), axis=1)
        return float(-entropy.mean())


class DeepEmbeddedValidation(_TargetAwareScorer):
    """Importance-weighted source validation loss in the embedding (higher is better).

    Deep embedded validation (You et al., ICML 2019), as skada defines it:
    the scored rows' labelled source samples are split in two; a domain
    classifier learns, on the embeddings of the first part and of the target
    rows, to tell source from target; each sample of the second part gets the
    density ratio ``w = (n_first / n_target) * P(target | e) / P(source | e)``
    and the estimate is the mean of ``w * log loss`` corrected by the control
    variate ``eta = -cov(w * loss, w) / var(w)``. The score is its negative,
    so that higher is better, as scikit-learn's searches expect.

    The embedding is ``estimator.transform`` (a fine-tuner's backbone, also
    as a pipeline's last step), or, for a ``Pipeline`` ending in a plain
    classifier, its steps before the classifier; the probabilities are
    ``estimator.predict_proba``.

    Only the source rows' labels are read: a target row's label, when one is
    given, is ignored. The source rows must be samples the estimator did not
    train on (a validation fold's), else the score measures the fit, not the
    transfer.

    Parameters
    ----------
    domain_classifier : classifier or None, default=None
        Fitted on the embeddings to tell source (1) from target (0); it needs
        ``predict_proba``. None: a ``StandardScaler`` and a
        ``LogisticRegression(max_iter=1000)``.
    validation_size : float, default=0.33
        The share of the source rows whose weighted loss is the estimate
        (the rest train the domain classifier).
    random_state : int, RandomState or None, default=0
        The split of the source rows.
    eps : float, default=1e-15
        Floor of the probabilities inside the logarithm (and of the domain
        classifier's, in the ratio).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> rng = np.random.RandomState(0)
    >>> X_source = rng.normal(size=(200, 2)); y_source = (X_source[:, 0] > 0).astype(int)
    >>> X_target = rng.normal(0.5, 1, size=(100, 2))
    >>> clf = make_pipeline(StandardScaler(), LogisticRegression()).fit(X_source[:100],
    ...                                                                y_source[:100])
    >>> X = np.concatenate([X_source[100:], X_target])
    >>> y = np.concatenate([y_source[100:], -np.ones(100, dtype=int)])
    >>> round(DeepEmbeddedValidation()(clf, X, y), 2)  # the estimated target log loss, negated
    -0.19
    """

    @positional_deprecated
    def __init__(self, domain_classifier=None, *, validation_size=0.33, random_state=0,
                 eps=1e-15):
        self.domain_classifier = domain_classifier
        self.validation_size = validation_size
        self.random_state = random_state
        self.eps = eps

    def __call__(self, estimator, X, y=None, sample_domain=None):
        if not hasattr(estimator, "predict_proba"):
            raise TypeError(f"DeepEmbeddedValidation weights the log loss of predict_proba; "
                            f"{type(estimator).__name__} has none (a classifier is needed).")
        target = _target_rows(X, y, sample_domain)
        if y is None:
            raise ValueError("DeepEmbeddedValidation needs the source rows' labels: pass y.")
        y = np.asarray(y)
        source = np.flatnonzero(~target & ~unlabelled_rows(y, regression=False))
        known = np.isin(y[source], np.asarray(getattr(estimator, "classes_", y[source])))
        if not known.all():
            warnings.warn(f"{int((~known).sum())} held-out source samples have labels the "
                          "model was not trained on; they are left out of the estimate.",
                          UserWarning, stacklevel=2)
            source = source[known]
        if len(source) < 4:
            raise ValueError(f"DeepEmbeddedValidation needs labelled source samples among the "
                             f"scored rows (sample_domain > 0, or labelled rows); got "
                             f"{len(source)}. Score on a split that holds out source samples.")
        fit_rows, val_rows = train_test_split(source, test_size=self.validation_size,
                                              random_state=self.random_state)
        embed = _embedding(estimator)
        e_fit, e_val, e_target = (np.asarray(embed(_safe_indexing(X, rows))).reshape(len(rows), -1)
                                  for rows in (fit_rows, val_rows, np.flatnonzero(target)))
        classifier = (make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
                      if self.domain_classifier is None else clone(self.domain_classifier))
        classifier.fit(np.concatenate([e_fit, e_target]),
                       np.r_[np.ones(len(e_fit), int), np.zeros(len(e_target), int)])
        p = np.clip(np.asarray(classifier.predict_proba(e_val), dtype=np.float64), self.eps, None)
        column = list(classifier.classes_)
        weights = len(e_fit) / len(e_target) * p[:, column.index(0)] / p[:, column.index(1)]
        loss = _log_loss(estimator, _safe_indexing(X, val_rows), y[val_rows], self.eps)
        weighted = weights * loss
        var = np.var(weights, ddof=1)
        eta = 0.0 if var == 0 else -np.cov(weighted, weights)[0, 1] / var
        return float(-(weighted.mean() + eta * weights.mean() - eta))


def _embedding(estimator):
    """The function that embeds ``X``: up to the last step that transforms (skada's rule).

    A fine-tuner transforms (its backbone's embedding), also as a
    pipeline's final step; a pipeline ending in a plain classifier embeds
    through the steps before it; an estimator that transforms nothing sees
    the flattened inputs.
    """
    if isinstance(estimator, Pipeline):
        for i in reversed(range(len(estimator))):
            if hasattr(estimator[i], "transform"):
                return estimator[:i + 1].transform
        return _flat
    if hasattr(estimator, "transform"):
        return estimator.transform
    return _flat


def _flat(X):
    X = np.asarray(X)
    return X.reshape(len(X), -1)


def _log_loss(estimator, X, y, eps):
    """Per-sample cross-entropy of ``predict_proba`` (a label it does not know: ``-log eps``).

    The columns are ``classes_``; an estimator without it (skada's pipeline)
    has the labels 0 .. n_classes - 1 as its columns.
    """
    proba = np.clip(np.asarray(estimator.predict_proba(X), dtype=np.float64), eps, None)
    try:
        classes = np.asarray(estimator.classes_).tolist()
    except AttributeError:
        classes = list(range(proba.shape[1]))
    column = {label: i for i, label in enumerate(classes)}
    index = np.array([column.get(label, -1) for label in np.asarray(y).tolist()])
    picked = np.where(index >= 0, proba[np.arange(len(y)), np.maximum(index, 0)], eps)
    return -np.log(picked)


def _target_rows(X, y, sample_domain):
    n = len(X)
    if sample_domain is not None:
        target = check_domain(np.ravel(sample_domain), n) < 0
    elif y is not None:
        target = unlabelled_rows(y, regression=False)
    else:
        target = np.ones(n, dtype=bool)
    if not target.any():
        raise ValueError("no target sample to score: give sample_domain (negative for the "
                         "target domain) or mark target samples with y = -1.")
    return target

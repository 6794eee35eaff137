"""The unsupervised scorers of sktransfer.scorers (choosing lambda without target labels)."""

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from torch import nn

from sktransfer import FineTunedClassifier
from sktransfer.scorers import DeepEmbeddedValidation


def _covariate_shift(seed, n_source=2000, n_target=1000):
    """One labelling rule, source around 0 and target shifted: a linear model fits them unequally."""
    rng = np.random.RandomState(seed)
    Xs = rng.normal(size=(n_source, 2))
    Xt = rng.normal(1.2, 1.0, size=(n_target, 2))

    def label(X):
        return (X[:, 0] + 0.6 * X[:, 1] ** 2 > 0.8).astype(int)

    return Xs, label(Xs), Xt, label(Xt)


def _log_loss(proba, y):
    return float(np.mean(-np.log(np.clip(proba[np.arange(len(y)), y], 1e-15, None))))


def test_dev_estimates_the_target_loss_better_than_the_plain_source_loss():
    dev_error, plain_error = [], []
    for seed in range(5):
        Xs, ys, Xt, yt = _covariate_shift(seed)
        clf = make_pipeline(StandardScaler(), LogisticRegression()).fit(Xs[:500], ys[:500])
        target_loss = _log_loss(clf.predict_proba(Xt), yt)
        X = np.concatenate([Xs[500:], Xt])
        y = np.concatenate([ys[500:], -np.ones(len(Xt), dtype=int)])
        dev = -DeepEmbeddedValidation(random_state=seed)(clf, X, y)
        plain = _log_loss(clf.predict_proba(Xs[500:]), ys[500:])
        dev_error.append(abs(dev - target_loss))
        plain_error.append(abs(plain - target_loss))
    # the plain source loss is off by the shift (0.093 on average); the
    # weighted one by about half as much (0.050)
    assert np.mean(dev_error) < 0.7 * np.mean(plain_error)


def test_dev_is_the_papers_estimator_with_its_control_variate():
    Xs, ys, Xt, _ = _covariate_shift(0, 600, 300)
    clf = make_pipeline(StandardScaler(), LogisticRegression()).fit(Xs[:300], ys[:300])
    X = np.concatenate([Xs[300:], Xt])
    domain = np.r_[np.ones(300, int), -np.ones(300, int)]
    score = DeepEmbeddedValidation(domain_classifier=LogisticRegression(), random_state=0)(
        clf, X, np.r_[ys[300:], np.zeros(300, int)], sample_domain=domain)
    # by hand: split the source rows, fit the domain classifier, weight, correct
    fit_rows, val_rows = train_test_split(np.arange(300), test_size=0.33, random_state=0)
    embed = clf[:-1].transform
    domains = LogisticRegression().fit(
        np.concatenate([embed(X[fit_rows]), embed(Xt)]),
        np.r_[np.ones(len(fit_rows)), np.zeros(300)])
    p_target, p_source = domains.predict_proba(embed(X[val_rows])).T
    w = len(fit_rows) / 300 * p_target / p_source
    loss = -np.log(clf.predict_proba(X[val_rows])[np.arange(len(val_rows)), ys[300:][val_rows]])
    eta = -np.cov(w * loss, w)[0, 1] / np.var(w, ddof=1)
    assert score == pytest.approx(-(np.mean(w * loss) + eta * np.mean(w) - eta), rel=1e-10)


@pytest.fixture(scope="module")
def adapted(shifted_digits):
    X, y, _ = shifted_digits
    train = np.r_[np.arange(150), np.arange(200, 400)]
    clf = FineTunedClassifier(nn.Sequential(nn.Linear(64, 16), nn.ReLU()), adaptation="coral",
                              lr=0.05, max_epochs=3, random_state=0)
    clf.fit(X[train], np.where(train >= 200, -1, y[train]))
    return clf, X, y


def test_dev_on_a_fine_tuner_reads_the_source_labels_only(adapted):
    clf, X, y = adapted
    rows = np.r_[np.arange(150, 200), np.arange(200, 400)]   # held-out source, all target
    domain = np.where(rows >= 200, -1, 1)
    scorer = DeepEmbeddedValidation()
    masked = scorer(clf, X[rows], np.where(domain < 0, -1, y[rows]))
    assert np.isfinite(masked) and masked < 0
    # the target rows' labels, when given beside sample_domain, are not read
    assert scorer(clf, X[rows], y[rows], sample_domain=domain) == pytest.approx(masked)
    shuffled = np.where(domain < 0, np.random.RandomState(1).permutation(y[rows]), y[rows])
    assert scorer(clf, X[rows], shuffled, sample_domain=domain) == pytest.approx(masked)
    # as a pipeline's last step, the embedding is still the fine-tuner's
    pipe = Pipeline([("identity", FunctionTransformer().fit(X)), ("clf", clf)])
    assert scorer(pipe, X[rows], np.where(domain < 0, -1, y[rows])) == pytest.approx(masked)


def test_dev_names_what_is_missing(adapted):
    clf, X, y = adapted
    with pytest.raises(ValueError, match="labelled source samples"):
        DeepEmbeddedValidation()(clf, X[200:], -np.ones(200, dtype=int))
    with pytest.raises(ValueError, match="source rows' labels"):
        DeepEmbeddedValidation()(clf, X, None, sample_domain=np.r_[np.ones(200, int),
                                                                  -np.ones(200, int)])
    with pytest.raises(TypeError, match="predict_proba"):
        DeepEmbeddedValidation()(LinearRegression().fit(X[:200], y[:200]), X,
                                 np.r_[y[:200], -np.ones(200, dtype=int)])


def test_dev_leaves_out_source_rows_it_cannot_score(adapted):
    clf, X, y = adapted
    rows = np.r_[np.arange(150, 200), np.arange(200, 400)]
    domain = np.where(rows >= 200, -1, 1)
    y_rows = y[rows].copy()
    base = DeepEmbeddedValidation()(clf, X[rows], y_rows, sample_domain=domain)
    # an unlabelled source row (y = -1) is not a source sample to score...
    y_missing = y_rows.copy()
    y_missing[:5] = -1
    kept = DeepEmbeddedValidation()(clf, X[rows][5:], y_rows[5:], sample_domain=domain[5:])
    assert DeepEmbeddedValidation()(clf, X[rows], y_missing, sample_domain=domain) == \
        pytest.approx(kept)
    # ...and a label the model never saw is left out, with a warning, not scored as -log(eps)
    y_unknown = y_rows.copy()
    y_unknown[:5] = 99
    with pytest.warns(UserWarning, match="5 held-out source samples"):
        score = DeepEmbeddedValidation()(clf, X[rows], y_unknown, sample_domain=domain)
    assert score == pytest.approx(kept) and abs(score - base) < 1.0

"""Transferability scores on features: LogME against a direct maximization of
its evidence, and the cross-validated k-NN and linear-probe baselines."""

import re

import numpy as np
import pytest
from scipy.optimize import minimize
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from sktransfer.transferability import knn_score, linear_probe_score, logme


def evidence(log_a, log_b, F, t):
    """The log evidence of Bayesian linear regression, term by term as written
    in LogME's paper, with a dense solve and log-determinant."""
    a, b = np.exp(log_a), np.exp(log_b)
    n, d = F.shape
    A = a * np.eye(d) + b * F.T @ F
    m = b * np.linalg.solve(A, F.T @ t)
    _, logdet = np.linalg.slogdet(A)
    r = F @ m - t
    return (d / 2 * np.log(a) + n / 2 * np.log(b) - logdet / 2 - b / 2 * r @ r
            - a / 2 * m @ m - n / 2 * np.log(2 * np.pi))


def reference_logme(F, targets):
    """Maximize ``evidence`` over (log a, log b) with Nelder-Mead from several starts.

    The box stops at exp(20): where the maximum lies at b -> infinity (N < D,
    where the features can interpolate), the dense formula loses float64
    precision beyond it, while the evidence there is within 1e-8 of its limit.
    Every start that converges does so in under 200 iterations; the ones that
    do not (they crawl along that edge of the box, N < D) never beat the best
    start, so 1000 iterations give the same maximum, to the last bit, as
    20000 did (in a tenth of the time).
    """
    F = np.asarray(F, dtype=np.float64)
    best = []
    for t in targets.T:
        runs = [minimize(lambda x: -evidence(x[0], x[1], F, t), x0, method="Nelder-Mead",
                         bounds=[(-20, 20)] * 2,
                         options=dict(xatol=1e-10, fatol=1e-13, maxiter=1000))
                for x0 in [(0.0, 0.0), (-4.0, 4.0), (4.0, -2.0), (8.0, 8.0)]]
        best.append(-min(r.fun for r in runs))
    return np.mean(best) / len(F)


def one_hot(y):
    return np.eye(y.max() + 1)[y]


def informative(n, d, n_classes, rng, noise=1.0):
    y = np.arange(n) % n_classes
    return one_hot(y) @ rng.randn(n_classes, d) + noise * rng.randn(n, d), y


@pytest.mark.parametrize("case", ["N > D", "N < D", "rank-deficient"])
def test_logme_is_the_maximum_evidence_for_classes(case):
    rng = np.random.RandomState(0)
    if case == "N > D":
        F, y = informative(80, 6, 3, rng)
    elif case == "N < D":
        F, y = informative(12, 30, 3, rng)
    else:  # 15 columns spanning 4 directions, and one constant column
        F, y = informative(60, 4, 3, rng)
        F = np.hstack([F @ rng.randn(4, 15), np.ones((60, 1))])
    assert logme(F, y) == pytest.approx(reference_logme(F, one_hot(y)), rel=1e-6)


def test_logme_is_the_maximum_evidence_for_two_regression_targets():
    rng = np.random.RandomState(1)
    F = rng.randn(70, 5)
    Y = F @ rng.randn(5, 2) + np.array([0.3, 2.0]) * rng.randn(70, 2)
    assert logme(F, Y, regression=True) == pytest.approx(reference_logme(F, Y), rel=1e-6)


def test_logme_of_float32_features_matches_float64():
    rng = np.random.RandomState(2)
    F, y = informative(200, 16, 4, rng)
    assert logme(F.astype(np.float32), y) == pytest.approx(logme(F, y), rel=1e-5)


def test_logme_prefers_features_that_separate_the_classes():
    rng = np.random.RandomState(0)
    separating, y = informative(150, 10, 5, rng, noise=0.3)
    noise = rng.randn(150, 10)
    assert logme(separating, y) > logme(noise, y) + 0.1


def test_logme_ignores_the_scale_of_the_features():
    rng = np.random.RandomState(3)
    F, y = informative(90, 12, 3, rng)
    assert logme(1000 * F, y) == pytest.approx(logme(F, y), rel=1e-9)


def test_logme_of_zero_features_is_the_noise_only_evidence():
    # With F = 0 the evidence is that of t ~ N(0, I / b), maximal at b = N / ||t||^2.
    y = np.array([0, 1, 1, 2, 2, 2, 0, 1, 2, 2])
    n = len(y)
    counts = np.bincount(y)  # ||t_c||^2 of each one-hot column
    expected = np.mean(n / 2 * np.log(n / counts) - n / 2 - n / 2 * np.log(2 * np.pi)) / n
    assert logme(np.zeros((n, 7)), y) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("features", [np.ones((20, 3)), np.full((20, 50), 7.0),
                                      np.zeros((2, 4))])
def test_logme_is_finite_for_degenerate_features(features):
    y = np.arange(len(features)) % 2
    assert np.isfinite(logme(features, y))


def test_logme_is_finite_for_a_target_the_features_fit_exactly():
    F = np.random.RandomState(0).randn(30, 3)
    assert np.isfinite(logme(F, F @ np.array([1.0, -2.0, 0.5]), regression=True))


@pytest.mark.parametrize("features, y, message", [
    (np.zeros(10), np.arange(10) % 2, "features must be 2-D"),
    (np.full((10, 2), np.nan), np.arange(10) % 2, "10 of 10 rows hold NaN"),
    (np.zeros((10, 2)), np.arange(9) % 2, "10 features rows but y has shape (9,)"),
    (np.zeros((10, 2)), np.zeros(10), "single class"),
    (np.zeros((10, 2)), np.linspace(0, 1, 10), "Pass regression=True"),
    (np.array([["a", "b"]] * 10), np.arange(10) % 2, "could not convert"),
])
def test_logme_rejects_bad_input_with_a_clear_message(features, y, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        logme(features, y)


def test_knn_score_is_the_accuracy_over_fixed_shuffled_stratified_folds(digits):
    images, labels = digits
    F = images[:300].reshape(300, -1).astype(np.float32)
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    expected = cross_val_score(KNeighborsClassifier(3), F, labels[:300], cv=folds).mean()
    assert knn_score(F, labels[:300], n_neighbors=3) == pytest.approx(expected)


def test_knn_score_caps_the_folds_at_the_smallest_class():
    rng = np.random.RandomState(0)
    F, y = informative(9, 4, 3, rng, noise=0.01)  # 3 samples per class: 3 folds
    assert knn_score(F, y, n_neighbors=1, cv=5) == 1.0


def test_knn_score_for_regression_is_the_r2():
    rng = np.random.RandomState(0)
    F = rng.rand(300, 2)
    smooth = np.sin(3 * F[:, 0]) + F[:, 1]
    assert knn_score(F, smooth, regression=True) > 0.95
    assert knn_score(F, rng.randn(300), regression=True) < 0.1


def test_linear_probe_separates_separable_classes_and_fits_linear_targets():
    rng = np.random.RandomState(0)
    F, y = informative(100, 8, 4, rng, noise=0.05)
    assert linear_probe_score(F, y) == 1.0
    target = F @ rng.randn(8)
    assert linear_probe_score(F, target, regression=True) > 0.99
    assert linear_probe_score(rng.randn(100, 8), y) < 0.5  # chance is 0.25


def test_cross_validated_scores_need_two_samples_per_class():
    F = np.random.RandomState(0).randn(5, 2)
    with pytest.raises(ValueError, match="at least 2 samples of every class; the smallest "
                                         "class has 1"):
        knn_score(F, np.array([0, 0, 1, 1, 2]))

"""sample_weight in the fine-tuners (issue 29): the weighted loss, its equivalences, the
errors, and the clients that pass weights (AdaBoost, metadata routing, cross_validate)."""

import copy
import inspect

import numpy as np
import pytest
import sklearn
import torch
from skorch.callbacks import Callback
from sklearn.datasets import load_digits
from sklearn.ensemble import AdaBoostClassifier
from sklearn.metrics import accuracy_score, make_scorer, r2_score, recall_score
from sklearn.model_selection import GridSearchCV, KFold, cross_validate
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import has_fit_parameter
from torch import nn

from conftest import tiny_mlp
from sktransfer import FineTunedClassifier, FineTunedRegressor, PretrainedFeatureTransformer

# Exact equivalences hold where training sees the same steps: one batch holding every
# sample (batch_size >= n), no dropout, no held-out split, a constant learning rate and a
# fixed seed. What is left is float32 rounding (sums taken in another order).
EXACT = dict(lr=0.05, max_epochs=4, batch_size=1024, dropout=0.0, early_stopping=None,
             schedule=None, random_state=0)
ATOL = 1e-5


class Snapshot(Callback):
    """Keeps a copy of the network as training starts, and the validation rows seen."""

    def on_train_begin(self, net, **kwargs):
        self.start_ = copy.deepcopy(net.module_).eval()

    def on_epoch_end(self, net, dataset_valid=None, **kwargs):
        self.valid_ = dataset_valid


def snapshot(est):
    # The estimator trains a copy of the callbacks it is given: read the net's own.
    return next(cb for _, cb in est.net_.callbacks_ if isinstance(cb, Snapshot))


def valid_rows(est):
    """The indices (into the fitted X) of the rows early stopping held out."""
    dataset = snapshot(est).valid_
    while not hasattr(dataset, "indices"):  # a wrapper that carries the weights
        dataset = getattr(dataset, "dataset", None) or getattr(dataset, "rows")
    return np.asarray(dataset.indices)


@pytest.fixture(scope="module")
def flat_digits(digits):
    """Digits as 64 features in [0, 1], 400 samples."""
    images, labels = digits
    return (images[:400].reshape(400, -1) / 255.0).astype(np.float32), labels[:400]


@pytest.fixture(scope="module")
def small(flat_digits):
    """60 digits of classes 0-4, and a regression target made from their pixels."""
    X, digit = flat_digits
    keep = np.flatnonzero(digit < 5)[:60]
    X, y = X[keep], digit[keep]
    return X, y, 3.0 * X[:, :32].mean(axis=1) - X[:, 32:].mean(axis=1) + 0.1 * y


def outputs(est, X):
    """What a fitted model gives: the same weights give the same outputs."""
    out = [est.transform(X)]
    out.append(est.predict_proba(X) if hasattr(est, "predict_proba") else est.predict(X))
    return out


def assert_same_model(a, b, X, atol=ATOL):
    for left, right in zip(outputs(a, X), outputs(b, X)):
        np.testing.assert_allclose(left, right, rtol=0, atol=atol)


def assert_other_model(a, b, X):
    """The counterpart of assert_same_model: the change made a difference."""
    assert not all(np.allclose(left, right, rtol=0, atol=1e-3)
                   for left, right in zip(outputs(a, X), outputs(b, X)))


def both(small):
    X, y, target = small
    return {"classifier": (FineTunedClassifier, y), "regressor": (FineTunedRegressor, target)}


# -- the signature -----------------------------------------------------------------------

@pytest.mark.parametrize("Estimator", [FineTunedClassifier, FineTunedRegressor,
                                       PretrainedFeatureTransformer])
def test_sample_weight_is_a_named_fit_parameter(Estimator):
    # What AdaBoost, CalibratedClassifierCV and the metadata routing look for.
    assert has_fit_parameter(Estimator(), "sample_weight")
    if Estimator is not PretrainedFeatureTransformer:
        assert "sample_weight" in inspect.signature(Estimator.partial_fit).parameters


# -- the loss ----------------------------------------------------------------------------

def test_first_batch_loss_is_the_weighted_mean_with_class_weights(small):
    X, y, _ = small
    w = np.random.RandomState(0).uniform(0, 3, len(X))
    w[:5] = 0
    class_weight = {0: 2.0, 3: 0.5}
    clf = FineTunedClassifier(tiny_mlp, class_weight=class_weight, callbacks=[Snapshot()],
                              **{**EXACT, "max_epochs": 1}).fit(X, y, sample_weight=w)
    with torch.no_grad():
        logits = snapshot(clf).start_(torch.from_numpy(X)).double()
    per_sample = nn.functional.cross_entropy(logits, torch.from_numpy(y), reduction="none")
    c = np.array([class_weight.get(label, 1.0) for label in y])
    by_hand = float((w * c * per_sample.numpy()).sum() / (w * c).sum())
    recorded = clf.history_[0, "batches", 0, "train_loss"]
    assert recorded == pytest.approx(by_hand, rel=1e-5)
    # The weights change the loss: it is not the unweighted one.
    assert abs(by_hand - float(per_sample.mean())) > 1e-3
    assert clf.history_[0, "train_loss"] == pytest.approx(by_hand, rel=1e-5)


def test_weighted_loss_module_on_one_batch():
    from sktransfer.training.weights import WeightedLoss

    rng = np.random.RandomState(0)
    pred = torch.tensor(rng.normal(size=(6, 2)), requires_grad=True)
    target = torch.tensor(rng.normal(size=(6, 2)))
    w = torch.tensor([0.0, 1.0, 2.0, 0.5, 3.0, 1.0], dtype=torch.float64)
    loss = WeightedLoss(nn.MSELoss())(pred, {"target": target, "weight": w})
    # each sample's squared error averaged over its outputs, then the weighted mean
    by_hand = (w * ((pred - target) ** 2).mean(1)).sum() / w.sum()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-12)
    # unweighted targets: exactly the criterion
    assert WeightedLoss(nn.MSELoss())(pred, target).item() == nn.MSELoss()(pred, target).item()
    # a batch that weighs nothing: loss 0 and zero gradients, no NaN
    zero = WeightedLoss(nn.MSELoss())(pred, {"target": target, "weight": torch.zeros(6)})
    zero.backward()
    assert zero.item() == 0.0 and torch.equal(pred.grad, torch.zeros_like(pred))


def test_batches_whose_weights_are_all_zero_give_no_nan(small):
    X, y, _ = small
    w = np.zeros(len(X))
    w[:2] = 1.0  # 60 samples in batches of 10: at least 4 of the 6 weigh nothing
    clf = FineTunedClassifier(tiny_mlp, **{**EXACT, "batch_size": 10}).fit(
        X, y, sample_weight=w)
    losses = [b["train_loss"] for epoch in clf.history_ for b in epoch["batches"]]
    assert np.isfinite(losses).all()
    assert sum(loss == 0 for loss in losses[:6]) >= 4  # per the spec, they contribute 0
    assert np.isfinite(clf.predict_proba(X)).all()
    for p in clf.backbone_.module.parameters():
        assert torch.isfinite(p).all()


# -- the equivalences (exact up to float32 rounding) ---------------------------------------

@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_zero_weight_equals_the_row_removed(small, kind):
    X = small[0]
    Estimator, y = both(small)[kind]
    w = np.ones(len(X))
    w[[3, 17, 40]] = 0
    keep = w > 0
    weighted = Estimator(tiny_mlp, **EXACT).fit(X, y, sample_weight=w)
    removed = Estimator(tiny_mlp, **EXACT).fit(X[keep], y[keep])
    assert_same_model(weighted, removed, X)
    # and those rows did count without the zeros
    assert_other_model(weighted, Estimator(tiny_mlp, **EXACT).fit(X, y), X)


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_integer_weights_equal_duplicated_rows(small, kind):
    X = small[0]
    Estimator, y = both(small)[kind]
    w = np.random.RandomState(1).randint(1, 4, len(X))
    weighted = Estimator(tiny_mlp, **EXACT).fit(X, y, sample_weight=w)
    repeated = Estimator(tiny_mlp, **EXACT).fit(np.repeat(X, w, axis=0), np.repeat(y, w, axis=0))
    assert_same_model(weighted, repeated, X)
    assert_other_model(weighted, Estimator(tiny_mlp, **EXACT).fit(X, y), X)


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_scaling_the_weights_changes_nothing(small, kind):
    # A weighted mean per batch: w and 1000 * w take the same steps, also over several
    # shuffled batches and with the default schedule.
    X = small[0]
    Estimator, y = both(small)[kind]
    params = dict(lr=0.05, max_epochs=3, batch_size=16, random_state=0)
    w = np.random.RandomState(2).uniform(0.1, 2.0, len(X))
    a = Estimator(tiny_mlp, **params).fit(X, y, sample_weight=w)
    b = Estimator(tiny_mlp, **params).fit(X, y, sample_weight=1000 * w)
    assert_same_model(a, b, X)


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_unit_or_scalar_weights_equal_no_weights(small, kind):
    X = small[0]
    Estimator, y = both(small)[kind]
    params = dict(lr=0.05, max_epochs=3, batch_size=16, random_state=0)
    plain = Estimator(tiny_mlp, **params).fit(X, y)
    assert_same_model(Estimator(tiny_mlp, **params).fit(X, y, sample_weight=np.ones(len(X))),
                      plain, X, atol=1e-6)
    # a scalar is broadcast, as scikit-learn's estimators do
    assert_same_model(Estimator(tiny_mlp, **params).fit(X, y, sample_weight=2.5), plain, X,
                      atol=1e-6)
    assert plain.history_[:, "train_loss"] == pytest.approx(
        Estimator(tiny_mlp, **params).fit(X, y, sample_weight=np.ones(len(X)))
        .history_[:, "train_loss"], rel=1e-6)


def test_partial_fit_weights_zero_equal_the_rows_removed(small):
    X, y, _ = small
    w = np.ones(len(X))
    w[:10] = 0
    params = {k: v for k, v in EXACT.items() if k != "max_epochs"}
    weighted = FineTunedClassifier(tiny_mlp, **params)
    removed = FineTunedClassifier(tiny_mlp, **params)
    weighted.partial_fit(X, y, classes=np.arange(5), sample_weight=w)
    removed.partial_fit(X[10:], y[10:], classes=np.arange(5))
    assert_same_model(weighted, removed, X)
    # later calls go on with weights too
    weighted.partial_fit(X, y, sample_weight=w)
    removed.partial_fit(X[10:], y[10:])
    assert len(weighted.history_) == 2
    assert_same_model(weighted, removed, X)

    reg = FineTunedRegressor(tiny_mlp, **params)
    reg.partial_fit(X, small[2], sample_weight=w)
    assert_other_model(reg, FineTunedRegressor(tiny_mlp, **params).partial_fit(X, small[2]),
                       X)


def test_head_first_training_uses_the_weights(small):
    # freeze_epochs: the head is fitted first (L-BFGS on the frozen embeddings), weighted too
    X, y, _ = small
    w = np.ones(len(X))
    w[:12] = 0
    # SGD: after the L-BFGS fit the head's gradients are ~1e-9, and Adam's
    # normalized step would turn their float32 rounding into steps of size lr.
    params = {**EXACT, "freeze_epochs": 1, "max_epochs": 2, "optimizer": "sgd"}
    weighted = FineTunedClassifier(tiny_mlp, **params).fit(X, y, sample_weight=w)
    assert_same_model(weighted, FineTunedClassifier(tiny_mlp, **params).fit(
        X, y, sample_weight=1000 * w), X)
    removed = FineTunedClassifier(tiny_mlp, **params).fit(X[12:], y[12:])
    assert_same_model(weighted, removed, X)


def test_l2sp_composes_with_weights(small):
    X, y, _ = small
    w = np.ones(len(X))
    w[:12] = 0
    params = {**EXACT, "l2sp": 0.05, "weight_decay": 0.0}
    weighted = FineTunedClassifier(tiny_mlp, **params).fit(X, y, sample_weight=w)
    removed = FineTunedClassifier(tiny_mlp, **params).fit(X[12:], y[12:])
    assert_same_model(weighted, removed, X)


def test_contrastive_objective_takes_weights(small):
    X, y, _ = small
    params = dict(objective="contrastive", lr=0.01, max_epochs=2, n_pairs=4, batch_size=16,
                  random_state=0)
    w = np.random.RandomState(5).uniform(0.1, 2.0, len(X))
    plain = FineTunedClassifier(tiny_mlp, **params).fit(X, y)
    a = FineTunedClassifier(tiny_mlp, **params).fit(X, y, sample_weight=w)
    b = FineTunedClassifier(tiny_mlp, **params).fit(X, y, sample_weight=1000 * w)
    assert_same_model(a, b, X)
    assert_other_model(a, plain, X)
    assert_same_model(FineTunedClassifier(tiny_mlp, **params).fit(
        X, y, sample_weight=np.ones(len(X))), plain, X, atol=1e-6)


def test_adaptation_weighs_source_rows_and_ignores_target_weights(shifted_digits):
    X, y, domain = shifted_digits
    X, y, domain = X[::4], y[::4].copy(), domain[::4]  # 50 source and 50 target rows
    y[domain < 0] = -1  # the target rows are unlabelled
    params = dict(adaptation="coral", lr=0.05, max_epochs=2, batch_size=16, random_state=0)
    rng = np.random.RandomState(6)
    w = rng.uniform(0.1, 2.0, len(X))
    other = w.copy()
    other[domain < 0] = rng.uniform(0.1, 2.0, (domain < 0).sum())
    a = FineTunedClassifier(tiny_mlp, **params).fit(X, y, sample_domain=domain,
                                                    sample_weight=w)
    b = FineTunedClassifier(tiny_mlp, **params).fit(X, y, sample_domain=domain,
                                                    sample_weight=other)
    assert_same_model(a, b, X)
    plain = FineTunedClassifier(tiny_mlp, **params).fit(X, y, sample_domain=domain)
    assert_other_model(a, plain, X)
    with pytest.raises(ValueError, match="sample_weight"):
        FineTunedClassifier(tiny_mlp, **params).fit(X, y, sample_domain=domain,
                                                    sample_weight=np.where(domain < 0, 1.0, 0))


# -- errors ------------------------------------------------------------------------------

BAD_WEIGHTS = {
    "negative": lambda n: np.r_[-1.0, np.ones(n - 1)],
    "nan": lambda n: np.r_[np.nan, np.ones(n - 1)],
    "inf": lambda n: np.r_[np.inf, np.ones(n - 1)],
    "all zero": lambda n: np.zeros(n),
    "too short": lambda n: np.ones(n - 1),
    "too long": lambda n: np.ones(n + 1),
}


@pytest.mark.parametrize("bad", list(BAD_WEIGHTS))
@pytest.mark.parametrize("kind", ["classifier", "regressor"])
@pytest.mark.parametrize("method", ["fit", "partial_fit"])
def test_bad_weights_are_a_value_error_naming_sample_weight(small, bad, kind, method):
    X = small[0][:20]
    Estimator, y = both(small)[kind]
    y = y[:20]
    est = Estimator(tiny_mlp, **EXACT)
    with pytest.raises(ValueError, match="sample_weight"):
        getattr(est, method)(X, y, sample_weight=BAD_WEIGHTS[bad](len(X)))


def test_bad_weights_of_a_later_partial_fit_are_refused_too(small):
    X, y, _ = small
    clf = FineTunedClassifier(tiny_mlp, **EXACT).partial_fit(X, y)
    before = clf.predict_proba(X)
    with pytest.raises(ValueError, match="sample_weight"):
        clf.partial_fit(X, y, sample_weight=-np.ones(len(X)))
    np.testing.assert_array_equal(clf.predict_proba(X), before)  # nothing trained


# -- early stopping's held-out rows carry their weights -------------------------------------

def test_validation_scores_of_a_classifier_are_weighted(small):
    X, y, _ = small
    w = np.random.RandomState(3).choice([0.0, 0.2, 5.0], len(X))
    w[:6] = 1.0  # never all zero on the held-out rows
    clf = FineTunedClassifier(tiny_mlp, callbacks=[Snapshot()], **{
        **EXACT, "max_epochs": 1, "early_stopping": 1, "validation_fraction": 0.5}).fit(
        X, y, sample_weight=w)
    rows = valid_rows(clf)
    proba = clf.predict_proba(X[rows])
    wv = w[rows]
    pred = clf.classes_[proba.argmax(1)]
    acc = accuracy_score(y[rows], pred, sample_weight=wv)
    assert clf.history_[-1, "valid_acc"] == pytest.approx(acc, abs=1e-6)
    loss = -np.log(proba[np.arange(len(rows)), np.searchsorted(clf.classes_, y[rows])])
    assert clf.history_[-1, "valid_loss"] == pytest.approx((wv * loss).sum() / wv.sum(),
                                                          rel=1e-4)
    # the weights matter on these rows (else this test could not fail)
    assert abs(acc - accuracy_score(y[rows], pred)) > 1e-3 \
        or abs(loss.mean() - (wv * loss).sum() / wv.sum()) > 1e-3


def test_regressor_validation_r2_is_weighted(small):
    X, _, target = small
    w = np.random.RandomState(4).choice([0.1, 1.0, 10.0], len(X))
    reg = FineTunedRegressor(tiny_mlp, callbacks=[Snapshot()], **{
        **EXACT, "max_epochs": 1, "early_stopping": 1, "validation_fraction": 0.5}).fit(
        X, target, sample_weight=w)
    assert "valid_r2" in reg.history_[-1]
    rows = valid_rows(reg)
    pred = reg.predict(X[rows])
    weighted = r2_score(target[rows], pred, sample_weight=w[rows])
    assert reg.history_[-1, "valid_r2"] == pytest.approx(weighted, abs=1e-4)
    assert abs(weighted - r2_score(target[rows], pred)) > 1e-3


# -- clients -----------------------------------------------------------------------------

def small_mlp():
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())


def test_adaboost_over_three_fine_tuners_on_digits():
    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    # 0.67 to 0.78 held-out accuracy over random_state 0-4 (0.75 at 0)
    member = FineTunedClassifier(small_mlp, lr=0.05, max_epochs=3, batch_size=16,
                                 random_state=0)
    ada = AdaBoostClassifier(member, n_estimators=3, random_state=0).fit(X[:300], y[:300])
    assert len(ada.estimators_) == 3 and (ada.estimator_weights_ > 0).all()
    # each member saw other weights, so the members differ
    assert not np.allclose(ada.estimators_[0].predict_proba(X[:50]),
                           ada.estimators_[1].predict_proba(X[:50]))
    assert ada.score(X[300:], y[300:]) > 0.6


def three_classes(flat_digits):
    X, digit = flat_digits
    keep = digit < 3
    X, y = X[keep], digit[keep]
    w = np.where(y == 0, 0.0, 1.0)  # class 0 weighs nothing
    return X, y, w


ROUTED = dict(lr=0.05, max_epochs=8, batch_size=16, random_state=0)


def recall_of_zero(est, X, y):
    return recall_score(y == 0, est.predict(X) == 0)


def test_routing_through_a_pipeline_into_grid_search(flat_digits):
    X, y, w = three_classes(flat_digits)
    scorer = make_scorer(accuracy_score)
    plain = GridSearchCV(Pipeline([("clf", FineTunedClassifier(tiny_mlp, **ROUTED))]),
                         {"clf__lr": [0.02, 0.05]}, cv=2, scoring=scorer).fit(X, y)
    assert recall_of_zero(plain, X, y) > 0.8
    with sklearn.config_context(enable_metadata_routing=True):
        clf = FineTunedClassifier(tiny_mlp, **ROUTED).set_fit_request(sample_weight=True)
        search = GridSearchCV(Pipeline([("clf", clf)]), {"clf__lr": [0.02, 0.05]}, cv=2,
                              scoring=scorer.set_score_request(sample_weight=False))
        search.fit(X, y, sample_weight=w)
    # The weights reached the fits: a class that weighs nothing is not learnt.
    assert recall_of_zero(search, X, y) < 0.2
    assert search.best_estimator_[-1].classes_.tolist() == [0, 1, 2]


def test_cross_validate_passes_weights_to_each_fit(flat_digits):
    X, y, w = three_classes(flat_digits)
    scorer = make_scorer(accuracy_score)
    with sklearn.config_context(enable_metadata_routing=True):
        clf = FineTunedClassifier(tiny_mlp, **ROUTED).set_fit_request(sample_weight=True)
        result = cross_validate(clf, X, y, params={"sample_weight": w},
                                cv=KFold(2, shuffle=True, random_state=0),
                                scoring=scorer.set_score_request(sample_weight=False),
                                return_estimator=True)
    for est in result["estimator"]:
        assert recall_of_zero(est, X, y) < 0.2
    # Without the request, routing refuses to drop the weights silently.
    with sklearn.config_context(enable_metadata_routing=True):
        with pytest.raises(Exception, match="sample_weight"):
            cross_validate(FineTunedClassifier(tiny_mlp, **ROUTED), X, y,
                           params={"sample_weight": w}, cv=2,
                           scoring=scorer.set_score_request(sample_weight=False))


def test_partial_fit_request_is_generated():
    with sklearn.config_context(enable_metadata_routing=True):
        clf = FineTunedClassifier(tiny_mlp).set_partial_fit_request(sample_weight=True)
        requests = clf.get_metadata_routing().partial_fit.requests
    assert requests["sample_weight"] is True


# -- the transformer accepts and ignores weights --------------------------------------------

def test_feature_transformer_accepts_and_ignores_sample_weight(small):
    X, y, _ = small
    plain = PretrainedFeatureTransformer(tiny_mlp, random_state=0).fit(X)
    w = np.random.RandomState(0).uniform(0, 2, len(X))
    weighted = PretrainedFeatureTransformer(tiny_mlp, random_state=0).fit(X, y,
                                                                          sample_weight=w)
    np.testing.assert_array_equal(weighted.transform(X), plain.transform(X))
    np.testing.assert_array_equal(
        PretrainedFeatureTransformer(tiny_mlp, random_state=0).fit(X, sample_weight=w)
        .transform(X), plain.transform(X))

"""Multilabel targets in FineTunedClassifier (issue 29): an (n, k) 0/1 indicator y trains
one network with a k-output head and binary cross-entropy."""

import copy
import pickle

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback
from sklearn.exceptions import NotFittedError
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from conftest import tiny_mlp
from sktransfer import (FineTunedClassifier, FineTunedRegressor, compare_transfer, load,
                        rank_backbones, save)

K = 4
# Trained on 240 samples, scored on 120 held out: F1 (samples average) measured 0.77 to 0.79
# over random_state 0-3; a barely trained model (one epoch at lr=1e-5) scores 0.20.
F1_BAR = 0.7
FIT = dict(lr=0.05, max_epochs=20, batch_size=32, random_state=0)
ONE_BATCH = dict(lr=0.05, max_epochs=1, batch_size=1024, dropout=0.0, schedule=None,
                 random_state=0)


def tagging(n=360, d=12, seed=0):
    """A synthetic tagging task: tag j is on where a random linear projection of the
    features passes its 60th percentile (about 40% of the samples carry each tag)."""
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    scores = X @ rng.normal(size=(d, K))
    Y = (scores > np.percentile(scores, 60, axis=0)).astype(np.int64)
    return X, Y


@pytest.fixture(scope="module")
def task():
    return tagging()


@pytest.fixture(scope="module")
def fitted(task):
    X, Y = task
    return FineTunedClassifier(tiny_mlp, **FIT).fit(X[:240], Y[:240])


class Snapshot(Callback):
    """Keeps a copy of the network as training starts, and the validation rows seen."""

    def on_train_begin(self, net, **kwargs):
        self.start_ = copy.deepcopy(net.module_).eval()

    def on_epoch_end(self, net, dataset_valid=None, **kwargs):
        self.valid_ = dataset_valid


def snapshot(est):
    return next(cb for _, cb in est.net_.callbacks_ if isinstance(cb, Snapshot))


def valid_rows(est):
    dataset = snapshot(est).valid_
    while not hasattr(dataset, "indices"):  # a wrapper that carries the weights
        dataset = getattr(dataset, "dataset", None) or getattr(dataset, "rows")
    return np.asarray(dataset.indices)


# -- what fit, predict, predict_proba and score give -----------------------------------------

def test_shapes_dtypes_and_classes(task, fitted):
    X, Y = task
    assert fitted.classes_.tolist() == list(range(K))
    pred = fitted.predict(X[240:])
    proba = fitted.predict_proba(X[240:])
    assert pred.shape == (120, K) and np.issubdtype(pred.dtype, np.integer)
    assert set(np.unique(pred)) <= {0, 1}
    assert proba.shape == (120, K) and proba.dtype == np.float32
    assert ((proba >= 0) & (proba <= 1)).all()
    # each label's own probability, not a distribution over labels
    assert not np.allclose(proba.sum(axis=1), 1, atol=1e-2)
    np.testing.assert_array_equal(pred, (proba > 0.5).astype(pred.dtype))
    # the head has k outputs: one network, not k
    assert fitted.head_(torch.zeros(1, fitted.n_features_out_)).shape == (1, K)


def test_score_is_subset_accuracy(task, fitted):
    X, Y = task
    pred = fitted.predict(X[240:])
    assert fitted.score(X[240:], Y[240:]) == pytest.approx(accuracy_score(Y[240:], pred))
    # subset accuracy: every label of a row right, stricter than the per-label rate
    assert fitted.score(X[240:], Y[240:]) < (pred == Y[240:]).mean()


def test_learns_a_tagging_task(task, fitted):
    X, Y = task
    f1 = f1_score(Y[240:], fitted.predict(X[240:]), average="samples", zero_division=0)
    assert f1 > F1_BAR
    assert fitted.history_[-1, "train_loss"] < fitted.history_[0, "train_loss"]


def test_labels_given_as_bool_or_float_indicators(task, fitted):
    X, Y = task
    for given in (Y.astype(bool), Y.astype(np.float64)):
        clf = FineTunedClassifier(tiny_mlp, **FIT).fit(X[:240], given[:240])
        assert clf.classes_.tolist() == list(range(K))
        np.testing.assert_allclose(clf.predict_proba(X[240:]), fitted.predict_proba(X[240:]),
                                   atol=1e-5)


# -- the loss ------------------------------------------------------------------------------

@pytest.mark.parametrize("class_weight", [None, {0: 3.0, 2: 0.5}, "balanced"])
def test_first_batch_loss_is_binary_cross_entropy_with_positive_weights(task, class_weight):
    X, Y = task
    X, Y = X[:80], Y[:80]
    clf = FineTunedClassifier(tiny_mlp, class_weight=class_weight, callbacks=[Snapshot()],
                              **ONE_BATCH).fit(X, Y)
    if class_weight is None:
        pos_weight = np.ones(K)
    elif class_weight == "balanced":
        pos_weight = (Y == 0).sum(0) / (Y == 1).sum(0)
    else:
        pos_weight = np.array([class_weight.get(j, 1.0) for j in range(K)])
    with torch.no_grad():
        logits = snapshot(clf).start_(torch.from_numpy(X)).double()
    by_hand = nn.functional.binary_cross_entropy_with_logits(
        logits, torch.from_numpy(Y).double(), pos_weight=torch.from_numpy(pos_weight))
    assert clf.history_[0, "train_loss"] == pytest.approx(float(by_hand), rel=1e-5)


def test_sample_weights_weigh_rows(task):
    X, Y = task
    X, Y = X[:80], Y[:80]
    w = np.random.RandomState(0).uniform(0, 3, len(X))
    clf = FineTunedClassifier(tiny_mlp, callbacks=[Snapshot()], **ONE_BATCH).fit(
        X, Y, sample_weight=w)
    with torch.no_grad():
        logits = snapshot(clf).start_(torch.from_numpy(X)).double()
    per_row = nn.functional.binary_cross_entropy_with_logits(
        logits, torch.from_numpy(Y).double(), reduction="none").mean(1).numpy()
    assert clf.history_[0, "train_loss"] == pytest.approx((w * per_row).sum() / w.sum(),
                                                          rel=1e-5)
    # weight 0 is the row removed
    w = np.ones(len(X))
    w[:20] = 0
    params = {**ONE_BATCH, "max_epochs": 4}
    weighted = FineTunedClassifier(tiny_mlp, **params).fit(X, Y, sample_weight=w)
    removed = FineTunedClassifier(tiny_mlp, **params).fit(X[20:], Y[20:])
    np.testing.assert_allclose(weighted.predict_proba(X), removed.predict_proba(X), atol=1e-5)


def test_class_weight_raises_a_labels_positive_rate(task, fitted):
    X, Y = task
    weighted = FineTunedClassifier(tiny_mlp, class_weight={1: 20.0}, **FIT).fit(X[:240],
                                                                               Y[:240])
    # label 1's positives weigh 20 times more: its probabilities rise, the others' do not
    # (measured over random_state 0-2: +0.04 to +0.08 for label 1, at most +0.003 elsewhere)
    more = (weighted.predict_proba(X[240:]).mean(axis=0)
            - fitted.predict_proba(X[240:]).mean(axis=0))
    assert more[1] > 0.02 and more.argmax() == 1
    with pytest.raises(ValueError, match="class_weight"):
        FineTunedClassifier(tiny_mlp, class_weight={K + 3: 2.0}, **FIT).fit(X, Y)


# -- early stopping ---------------------------------------------------------------------------

def test_early_stopping_splits_without_stratifying_and_records_subset_accuracy(task):
    X, Y = task
    clf = FineTunedClassifier(tiny_mlp, callbacks=[Snapshot()], early_stopping=1,
                              validation_fraction=0.25,
                              **{**ONE_BATCH, "max_epochs": 1}).fit(X[:120], Y[:120])
    rows = valid_rows(clf)
    assert len(rows) == 30
    assert clf.history_[-1, "valid_acc"] == pytest.approx(
        accuracy_score(Y[rows], clf.predict(X[rows])))
    by_hand = nn.functional.binary_cross_entropy(
        torch.from_numpy(clf.predict_proba(X[rows])).double(),
        torch.from_numpy(Y[rows]).double())
    assert clf.history_[-1, "valid_loss"] == pytest.approx(float(by_hand), rel=1e-4)
    # and it stops: the default patience on a longer fit
    long = FineTunedClassifier(tiny_mlp, early_stopping=True, lr=0.05, max_epochs=200,
                               batch_size=32, random_state=0).fit(X[:240], Y[:240])
    assert len(long.history_) < 200


# -- partial_fit -------------------------------------------------------------------------------

def test_partial_fit_continues_and_refuses_another_number_of_labels(task):
    X, Y = task
    clf = FineTunedClassifier(tiny_mlp, lr=0.05, batch_size=32, random_state=0)
    clf.partial_fit(X[:120], Y[:120])
    assert clf.classes_.tolist() == list(range(K))
    clf.partial_fit(X[120:240], Y[120:240], sample_weight=np.ones(120))
    assert len(clf.history_) == 2 and clf.predict(X[:5]).shape == (5, K)
    with pytest.raises(ValueError, match="label"):
        clf.partial_fit(X[:120], Y[:120, :3])
    with pytest.raises(ValueError):
        clf.partial_fit(X[:120], Y[:120, 0])  # a 1-D y after a multilabel one
    assert len(clf.history_) == 2


# -- round trips ---------------------------------------------------------------------------------

def test_pickle_and_save_load_round_trips(task, tmp_path):
    X, Y = task
    clf = FineTunedClassifier(nn.Sequential(nn.Linear(12, 16), nn.Tanh()),
                              class_weight="balanced", **{**FIT, "max_epochs": 3}).fit(X, Y)
    path = tmp_path / "tagger.skt"
    save(clf, path)
    for loaded in (pickle.loads(pickle.dumps(clf)), load(path)):
        assert loaded.classes_.tolist() == list(range(K))
        np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
        np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))
        assert loaded.score(X, Y) == clf.score(X, Y)
        loaded.partial_fit(X, Y)  # goes on training the same multilabel head
        assert loaded.predict(X).shape == Y.shape


# -- clients -------------------------------------------------------------------------------------

# The poor candidate (lr=0.002) predicts no tag for some rows: sklearn warns of their F1.
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
@pytest.mark.parametrize("scoring", ["f1_samples", "average_precision"])
def test_grid_search_in_a_pipeline(task, scoring):
    X, Y = task
    pipe = make_pipeline(StandardScaler(), FineTunedClassifier(tiny_mlp, **FIT))
    search = GridSearchCV(pipe, {"finetunedclassifier__lr": [0.002, 0.05]}, cv=2,
                          scoring=scoring).fit(X[:240], Y[:240])
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert search.best_params_ == {"finetunedclassifier__lr": 0.05}
    assert search.best_score_ > 0.6
    assert search.predict(X[240:]).shape == (120, K)


# -- what does not apply is refused by name -----------------------------------------------------

def test_contrastive_objective_refuses_multilabel(task):
    X, Y = task
    with pytest.raises(ValueError, match="contrastive"):
        FineTunedClassifier(tiny_mlp, objective="contrastive", **FIT).fit(X, Y)


def test_adaptation_refuses_multilabel(task):
    X, Y = task
    domain = np.where(np.arange(len(X)) < 240, 1, -1)
    with pytest.raises(ValueError, match="adaptation|multilabel"):
        FineTunedClassifier(tiny_mlp, adaptation="coral", **FIT).fit(X, Y,
                                                                      sample_domain=domain)


def test_multiclass_multioutput_targets_are_refused(task):
    X, Y = task
    with pytest.raises(ValueError, match="y"):
        FineTunedClassifier(tiny_mlp, **FIT).fit(X, Y + Y[:, ::-1])  # values 0, 1, 2


def test_compare_transfer_and_rank_backbones_refuse_multilabel_by_name(task):
    X, Y = task
    with pytest.raises(ValueError, match="multilabel"):
        compare_transfer(X, Y, tiny_mlp, cv=2)
    with pytest.raises(ValueError, match="multilabel"):
        compare_transfer(X, Y, tiny_mlp, cv=2, task="classification")
    with pytest.raises(ValueError, match="multilabel"):
        rank_backbones([tiny_mlp], X, Y, metrics=("knn",), rank_by="knn")


# -- a 2-D y for the regressor is still regression -----------------------------------------------

def test_regressor_keeps_two_dimensional_targets(task):
    X, Y = task
    # even a 0/1 matrix is a multi-output regression target for the regressor
    reg = FineTunedRegressor(tiny_mlp, **FIT).fit(X[:240], Y[:240])
    pred = reg.predict(X[240:])
    assert pred.shape == (120, K) and pred.dtype == np.float64
    assert reg.n_outputs_ == K and not hasattr(reg, "classes_")
    assert reg.score(X[240:], Y[240:]) > 0.3
    continuous = X[:, :2] @ np.array([[2.0, -1.0], [0.5, 3.0]]) + 10
    reg = FineTunedRegressor(tiny_mlp, **FIT).fit(X[:240], continuous[:240])
    assert reg.predict(X[240:]).shape == (120, 2)
    assert reg.score(X[240:], continuous[240:]) > 0.8


@pytest.mark.parametrize("runtime, quantize, atol", [("onnx", None, 1e-5),
                                                     ("compile", None, 1e-5),
                                                     ("onnx", "int8", None)])
def test_every_runtime_serves_the_label_probabilities(task, fitted, runtime, quantize, atol):
    # the sigmoid follows the network in every engine (not the classes' softmax)
    X, Y = task
    served = FineTunedClassifier(tiny_mlp, runtime=runtime, quantize=quantize, **FIT)
    served.fit(X[:240], Y[:240])
    proba, expected = served.predict_proba(X[240:]), fitted.predict_proba(X[240:])
    assert proba.shape == (120, K) and not np.allclose(proba.sum(1), 1.0)
    if atol is not None:
        np.testing.assert_allclose(proba, expected, rtol=0, atol=atol)
    else:  # int8: close, and most labels agree
        assert np.mean(served.predict(X[240:]) == fitted.predict(X[240:])) > 0.9


def test_dask_predicts_the_indicator_matrix_lazily(task, fitted):
    da = pytest.importorskip("dask.array")
    X, _ = task
    lazy = fitted.predict(da.from_array(X[240:], chunks=40))
    assert lazy.shape == (120, K)
    np.testing.assert_array_equal(lazy.compute(), fitted.predict(X[240:]))
    proba = fitted.predict_proba(da.from_array(X[240:], chunks=40)).compute()
    np.testing.assert_allclose(proba, fitted.predict_proba(X[240:]), atol=1e-6)


def test_multilabel_flag_is_public_and_needs_a_fit(fitted, task):
    assert fitted.multilabel_ is True
    X, Y = task
    single = FineTunedClassifier(tiny_mlp, **FIT).fit(X[:60], Y[:60, 0])
    assert single.multilabel_ is False
    with pytest.raises(NotFittedError):
        FineTunedClassifier(tiny_mlp).multilabel_

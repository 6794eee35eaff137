import copy
import pickle

import joblib
import numpy as np
import pytest
import torch
from skorch.callbacks import Callback
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from conftest import saved_as_if_on_cuda, stable_checks, tiny_mlp
from sktransfer import (FineTunedClassifier, FineTunedRegressor, PretrainedFeatureTransformer,
                        load_backbone)
from sktransfer._utils.seeding import seeded

FAST = dict(lr=0.1, max_epochs=6, batch_size=16, random_state=0)


def mlp():
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())


@pytest.fixture(scope="module")
def flat_digits(digits):
    """Digits as 64 features in [0, 1], 400 samples."""
    images, labels = digits
    return (images[:400].reshape(400, -1) / 255.0).astype(np.float32), labels[:400]


# A factory (not a module instance) is the parameter: joblib.hash, which the
# checks use to prove parameters are untouched, hashes tensors by address.
# torch's CPU matrix products round a row differently depending on how many
# rows share its batch (1 float32 ulp, ~6e-8), and permuting X changes which
# rows share the last batch; scikit-learn's check demands rtol=1e-7. The
# property users rely on is asserted below at float32 precision.
ORDER_CHECK = "check_methods_sample_order_invariance"
ROUNDING = ("float32 products round by 1 ulp with the batch composition; "
            "test_predictions_do_not_depend_on_sample_order asserts invariance at atol=1e-6")


# scikit-learn's weight-equivalence checks compare a weighted fit with a fit
# on repeated (or removed) rows at rtol=1e-7: mini-batch training in float32
# sees other batches and other rounding. tests/test_sample_weight.py asserts
# both equivalences where they hold (one batch, no dropout, atol=1e-5).
WEIGHT_CHECKS = ("check_sample_weight_equivalence_on_dense_data",
                 "check_sample_weight_equivalence_on_sparse_data")
WEIGHT_ROUNDING = ("mini-batch float32 training cannot match a fit on repeated rows at "
                   "rtol=1e-7; tests/test_sample_weight.py asserts the equivalences on one "
                   "batch at atol=1e-5")


@stable_checks([FineTunedClassifier(tiny_mlp, **FAST),
               FineTunedRegressor(tiny_mlp, **FAST)],
              expected_failed_checks=lambda est: {
                  ORDER_CHECK: ROUNDING,
                  **{check: WEIGHT_ROUNDING for check in WEIGHT_CHECKS}})
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("Estimator", [FineTunedClassifier, FineTunedRegressor])
def test_predictions_do_not_depend_on_sample_order(flat_digits, Estimator):
    X, digit = flat_digits
    X, y = X[:70], digit[:70] if Estimator is FineTunedClassifier else digit[:70] / 9.0
    est = Estimator(tiny_mlp, **FAST).fit(X, y)
    perm = np.random.RandomState(1).permutation(len(X))
    methods = ["transform", "predict"] + (["predict_proba"] if hasattr(est, "predict_proba")
                                           else [])
    for method in methods:
        direct = getattr(est, method)(X)
        permuted = getattr(est, method)(X[perm])
        if method == "predict" and Estimator is FineTunedClassifier:
            np.testing.assert_array_equal(permuted, direct[perm])
        else:
            np.testing.assert_allclose(permuted, direct[perm], rtol=0, atol=1e-6)


def test_init_does_no_work():
    clf = FineTunedClassifier("torchvision:does_not_exist", freeze="sideways", lr=-1)
    assert clone(clf).get_params()["freeze"] == "sideways"
    with pytest.raises(NotFittedError):
        clf.predict(np.zeros((1, 8, 8), np.uint8))


@pytest.mark.parametrize("labels", [np.array(["cat", "dog", "emu"]), np.array([-7, 3, 1000])])
def test_labels_come_back_and_proba_columns_follow_classes(flat_digits, labels):
    X, digit = flat_digits
    keep = digit < 3
    X, y = X[keep], labels[digit[keep]]
    clf = FineTunedClassifier(mlp, lr=0.01, max_epochs=8, random_state=0).fit(X, y)
    assert list(clf.classes_) == sorted(labels.tolist())
    pred = clf.predict(X)
    assert pred.dtype == y.dtype and set(pred) <= set(labels)
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], pred)
    assert clf.score(X, y) > 0.9


def test_binary_classification(flat_digits):
    X, digit = flat_digits
    y = np.where(digit % 2 == 0, "even", "odd")
    clf = FineTunedClassifier(mlp, lr=0.01, max_epochs=10, random_state=0).fit(X, y)
    assert clf.predict_proba(X).shape == (len(X), 2)
    assert clf.score(X, y) > 0.85


@pytest.mark.parametrize("two_d", [False, True])
def test_regressor_takes_1d_and_2d_targets(flat_digits, two_d):
    X, _ = flat_digits
    # Ink in the top and bottom halves, on scales far from the head's initial
    # outputs: the targets are standardized for training, so this is learnable.
    y = 1000.0 + 500.0 * X[:, :32].mean(axis=1)
    if two_d:
        y = np.c_[y, -0.01 * X[:, 32:].mean(axis=1)]
    reg = FineTunedRegressor(mlp, lr=0.01, max_epochs=20, random_state=0).fit(X, y)
    pred = reg.predict(X)
    assert pred.shape == y.shape and pred.dtype == np.float64
    assert reg.score(X, y) > 0.8
    assert reg.n_outputs_ == (2 if two_d else 1)


def test_transform_and_chaining_carry_the_finetuned_backbone(flat_digits):
    X, y = flat_digits
    source = FineTunedClassifier(mlp, lr=0.01, max_epochs=3, random_state=0).fit(X, y)
    embeddings = source.transform(X)
    assert embeddings.shape == (len(X), 16) and embeddings.dtype == np.float32
    assert source.n_features_out_ == 16
    # the fine-tuned weights, not the starting ones
    assert not np.allclose(embeddings, PretrainedFeatureTransformer(mlp).fit(X).transform(X))
    np.testing.assert_array_equal(PretrainedFeatureTransformer(source).fit(X).transform(X),
                                  embeddings)

    before = copy.deepcopy(source.backbone_.module.state_dict())
    target = FineTunedClassifier(source, freeze="backbone", max_epochs=2, random_state=0)
    target.fit(X, y % 2)
    np.testing.assert_array_equal(target.transform(X), embeddings)
    # the source estimator itself is untouched by the target's training
    for key, value in source.backbone_.module.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_partial_fit_continues_training(flat_digits):
    X, y = flat_digits
    clf = FineTunedClassifier(mlp, lr=0.01, random_state=0)
    clf.partial_fit(X[:50], y[:50], classes=np.arange(10))
    assert list(clf.classes_) == list(range(10)) and len(clf.history_) == 1
    first = clf.predict_proba(X)
    for _ in range(3):
        clf.partial_fit(X, y)
    assert len(clf.history_) == 4
    assert clf.history_[-1, "train_loss"] < clf.history_[0, "train_loss"]
    assert not np.allclose(clf.predict_proba(X), first)
    # fit starts over: a fresh history and model
    clf.set_params(max_epochs=2).fit(X, y)
    assert len(clf.history_) == 2
    with pytest.raises(ValueError, match="not seen in the first fit"):
        FineTunedClassifier(mlp, max_epochs=1).fit(X[y < 5], y[y < 5]).partial_fit(X, y)


class _Snapshots(Callback):
    """Keeps the network's weights after every epoch."""

    def on_train_begin(self, net, **kwargs):
        self.states = []

    def on_epoch_end(self, net, **kwargs):
        self.states.append(copy.deepcopy(net.module_.state_dict()))


def test_early_stopping_restores_the_best_epoch_and_history_has_scores(flat_digits):
    X, y = flat_digits
    snapshots = _Snapshots()
    # A high, constant learning rate: the validation loss soon stops improving.
    clf = FineTunedClassifier(mlp, lr=0.05, schedule=None, max_epochs=40, early_stopping=3,
                              validation_fraction=0.25, callbacks=[snapshots],
                              random_state=0).fit(X, y)
    history = clf.history_
    assert len(history) < 40
    valid_loss = history[:, "valid_loss"]
    assert all(0 <= acc <= 1 for acc in history[:, "valid_acc"])
    assert "train_loss" in history[-1] and "dur" in history[-1]
    # 100 of the 400 samples are held out
    assert (history[0, "train_batch_count"], history[0, "valid_batch_count"]) == (10, 4)
    # The callback given was copied: the one passed stays as it was.
    assert not hasattr(snapshots, "states")
    best = int(np.argmin(valid_loss))
    assert best < len(history) - 1
    kept = dict(clf.net_.callbacks_)["_Snapshots"].states[best]
    for key, value in clf._model().state_dict().items():
        torch.testing.assert_close(value, kept[key], rtol=0, atol=0)


def test_same_seed_same_predictions(flat_digits):
    X, y = flat_digits
    params = dict(head=(32,), dropout=0.3, lr=0.01, max_epochs=3, early_stopping=5,
                  random_state=42)
    a = FineTunedClassifier(mlp, **params).fit(X, y).predict_proba(X)
    b = FineTunedClassifier(mlp, **params).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    c = FineTunedClassifier(mlp, **{**params, "random_state": 7}).fit(X, y).predict_proba(X)
    assert not np.array_equal(a, c)


def test_joblib_round_trip_and_optimizer_state(flat_digits, tmp_path):
    X, y = flat_digits
    clf = FineTunedClassifier(mlp, lr=0.01, max_epochs=2, random_state=0).fit(X, y)
    joblib.dump(clf, tmp_path / "clf.joblib")
    loaded = joblib.load(tmp_path / "clf.joblib")
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    assert loaded.history_[:, "train_loss"] == clf.history_[:, "train_loss"]

    small = len(pickle.dumps(clf))
    keeping = clone(clf).set_params(keep_optimizer=True).fit(X, y)
    assert len(pickle.dumps(keeping)) > small + 0.5 * sum(
        p.numel() * 4 for p in clf._model().parameters())
    # With its optimizer state, a loaded model continues exactly as the
    # original does; without it, Adam's moments restart.
    resumed = pickle.loads(pickle.dumps(keeping))
    fresh = pickle.loads(pickle.dumps(keeping.set_params(keep_optimizer=False)))
    for model in (keeping, resumed, fresh):
        model.partial_fit(X, y)
    np.testing.assert_array_equal(resumed.predict_proba(X), keeping.predict_proba(X))
    assert not np.array_equal(fresh.predict_proba(X), keeping.predict_proba(X))


def test_pickle_loads_without_cuda(flat_digits, monkeypatch):
    X, y = flat_digits
    reg = FineTunedRegressor(mlp, max_epochs=1, random_state=0, l2sp=0.01).fit(X, y)
    with saved_as_if_on_cuda():  # the bytes a model pickled on a GPU machine holds
        data = pickle.dumps(reg)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loaded = pickle.loads(data)
    assert all(p.device.type == "cpu" for p in loaded._model().parameters())
    np.testing.assert_array_equal(loaded.predict(X), reg.predict(X))
    loaded.set_params(device="cpu").partial_fit(X, y)  # training resumes too


def test_grid_search_in_parallel_and_pipeline(flat_digits):
    X, y = flat_digits
    pipe = make_pipeline(StandardScaler(), FineTunedClassifier(mlp, max_epochs=2,
                                                               random_state=0))
    search = GridSearchCV(pipe, {"finetunedclassifier__lr": [1e-3, 1e-2],
                                 "finetunedclassifier__freeze": ["none", "backbone"]},
                          cv=2, n_jobs=2).fit(X, y)
    assert len(search.cv_results_["params"]) == 4
    assert search.best_params_["finetunedclassifier__lr"] == 1e-2
    assert search.score(X, y) > 0.5


def test_image_backbone_with_augmentation_and_frozen_batchnorm(digits):
    images, labels = digits
    X, y = images[:96], labels[:96]
    clf = FineTunedClassifier("torchvision:resnet18", weights=None, image_size=32, augment=True,
                              freeze=3, backbone_lr_mult=0.5, optimizer="sgd",
                              schedule="cosine", max_epochs=1, batch_size=32, random_state=0)
    clf.fit(X, y)
    assert clf.predict_proba(X[:5]).shape == (5, 10)
    assert clf.transform(X[:5]).shape == (5, 512)
    # fit loads the backbone first thing under its seed: the same weights.
    with seeded(0):
        start = load_backbone("torchvision:resnet18", None, image_size=32).module.state_dict()
    trained = clf.backbone_.module.state_dict()
    assert [name for name, _ in clf.backbone_.param_groups[:3]] == ["conv1", "bn1", "layer1"]
    # The frozen groups did not move, BatchNorm running statistics included.
    for key in ("conv1.weight", "bn1.weight", "bn1.running_mean", "layer1.0.bn1.running_var",
                "layer1.1.conv2.weight"):
        torch.testing.assert_close(trained[key], start[key], rtol=0, atol=0)
    for key in ("layer4.1.conv2.weight", "layer4.1.bn2.running_mean"):
        assert not torch.equal(trained[key], start[key])


def test_text_backbone_finetunes(minilm_path):
    texts = ["a great film", "loved every minute", "wonderful acting", "a joy to watch",
             "terrible plot", "boring and slow", "awful dialogue", "a waste of time"] * 2
    y = np.array(["pos"] * 4 + ["neg"] * 4 + ["pos"] * 4 + ["neg"] * 4)
    clf = FineTunedClassifier("hf:" + minilm_path, freeze=4, lr=1e-3, max_epochs=2,
                              batch_size=8, random_state=0).fit(texts, y)
    assert set(clf.predict(texts)) <= {"pos", "neg"}
    # transform gives the fine-tuned encoder's embeddings, not the pretrained ones
    tuned = clf.transform(texts[:3])
    pretrained = PretrainedFeatureTransformer("hf:" + minilm_path).fit(texts).transform(texts[:3])
    assert tuned.shape == pretrained.shape == (3, 384)
    assert not np.allclose(tuned, pretrained, atol=1e-4)
    np.testing.assert_array_equal(PretrainedFeatureTransformer(clf).fit(texts).transform(
        texts[:3]), tuned)


def test_verbose_prints_an_epoch_table(flat_digits, capsys):
    X, y = flat_digits
    FineTunedClassifier(mlp, max_epochs=2, early_stopping=5, verbose=1).fit(X, y)
    out = capsys.readouterr().out
    assert "train_loss" in out and "valid_acc" in out and "valid_loss" in out
    FineTunedClassifier(mlp, max_epochs=1).fit(X, y)
    assert capsys.readouterr().out == ""
    FineTunedClassifier(mlp, max_epochs=1, verbose=2).fit(X, y)
    captured = capsys.readouterr()
    assert "train_loss" in captured.out and "/13" in captured.err  # a progress bar


@pytest.mark.parametrize("params, y_change, message", [
    ({}, lambda y: np.where(y == 0, np.nan, y).astype(float), "y contains NaN"),
    ({}, lambda y: np.zeros_like(y), "only one class"),
    ({}, lambda y: y[:-1], "different lengths: X has 400 samples, y has 399"),
    ({"freeze": "everything"}, None, "freeze must be 'auto', 'none', 'backbone'"),
    ({"freeze": 5}, None, r"freeze=5 is larger than the number of parameter groups .*'0', '2'"),
    ({"schedule": "step"}, None, "schedule='step' is not one of"),
    ({"optimizer": "lion"}, None, "optimizer='lion' is not one of"),
    ({"optimizer": nn.Linear}, None, "torch.optim.Optimizer class"),
    ({"early_stopping": 0}, None, "early_stopping must be an integer >= 1 .*True for a "
                                  "patience of 5"),
    ({"early_stopping": 2, "validation_fraction": 1.5}, None, "validation_fraction"),
    ({"augment": True}, None, "augment=True applies to image backbones"),
    ({"head": (0,)}, None, "head sizes must be positive integers"),
    ({"dropout": 1.0}, None, "dropout must be a probability"),
    ({"class_weight": {"cat": 2.0}}, None, r"class_weight names labels \['cat'\]"),
    ({"lr": 0}, None, "lr must be a number > 0"),
])
def test_clear_errors(flat_digits, params, y_change, message):
    X, y = flat_digits
    if y_change is not None:
        y = y_change(y)
    with pytest.raises(ValueError, match=message):
        FineTunedClassifier(mlp, max_epochs=1, **params).fit(X, y)


def test_regressor_rejects_nan_targets(flat_digits):
    X, y = flat_digits
    with pytest.raises(ValueError, match="y contains NaN"):
        FineTunedRegressor(mlp).fit(X, np.where(y == 0, np.nan, y))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_mixed_precision_training_pickles_load_on_cpu(flat_digits, precision, monkeypatch):
    X, y = flat_digits
    clf = FineTunedClassifier(mlp, device="cuda", precision=precision, l2sp=0.01, lr=0.01,
                              max_epochs=4, keep_optimizer=True, random_state=0).fit(X, y)
    assert np.isfinite(clf.history_[:, "train_loss"]).all()
    assert clf.score(X, y) > 0.8
    # between calls the weights live on the CPU, so parallel searches share a GPU
    assert all(p.device.type == "cpu" for p in clf._model().parameters())
    on_cuda = clf.set_params(precision="fp32").predict_proba(X)
    data = pickle.dumps(clf)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loaded = pickle.loads(data).set_params(device="cpu")
    np.testing.assert_allclose(loaded.predict_proba(X), on_cuda, atol=1e-4)
    loaded.partial_fit(X, y)  # with the optimizer state, moved to the CPU
    assert len(loaded.history_) == 5


# -- interrupts ------------------------------------------------------------


class _InterruptAt(Callback):
    """Raises KeyboardInterrupt at the end of epoch ``epoch``, as a Ctrl-C there would."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, net, **kwargs):
        if len(net.history) == self.epoch:
            raise KeyboardInterrupt


def test_interrupt_propagates_and_keeps_what_was_trained(flat_digits):
    X, y = flat_digits
    clf = FineTunedClassifier(mlp, lr=0.01, max_epochs=5, early_stopping=10,
                              callbacks=[_InterruptAt(2)], random_state=0)
    with pytest.raises(KeyboardInterrupt, match="interrupted in epoch 2"):
        clf.fit(X, y)
    # Documented choice: fitted, with the weights of the epochs that ran.
    assert len(clf.history_) == 2 and "valid_loss" in clf.history_[-1]
    model = clf._model()
    assert not (clf.backbone_.module.training or clf.head_.training)
    assert all(p.device.type == "cpu" and p.requires_grad for p in model.parameters())
    assert clf.score(X, y) > 0.3  # trained: chance is 0.1
    # The same seed interrupted at the same place gives the same weights.
    again = clone(clf)
    with pytest.raises(KeyboardInterrupt):
        again.fit(X, y)
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))
    # and training goes on from there
    clf.set_params(callbacks=None).partial_fit(X, y)
    assert len(clf.history_) == 3


def test_grid_search_stops_on_interrupt(flat_digits):
    X, y = flat_digits
    clf = FineTunedClassifier(mlp, max_epochs=3, callbacks=[_InterruptAt(2)], random_state=0)
    search = GridSearchCV(clf, {"lr": [0.01, 0.02]}, cv=2)  # the default error_score=nan
    with pytest.raises(KeyboardInterrupt):
        search.fit(X, y)
    assert not hasattr(search, "cv_results_")


# -- seeds ------------------------------------------------------------------


def _fit_resnet_proba(X, y, weights):
    # A frozen backbone keeps the test fast; what a seed decides (head, split,
    # shuffling, dropout) is all there.
    clf = FineTunedClassifier("torchvision:resnet18", weights=weights, image_size=32,
                              freeze="backbone", head=(8,), dropout=0.2, early_stopping=True,
                              max_epochs=1, batch_size=8, random_state=0)
    return clf.fit(X, y).predict_proba(X)


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    import torchvision

    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.manual_seed(123)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return str(path)


def test_same_seed_same_model_first_fit_or_later_in_any_process(digits, resnet_file):
    from joblib import Parallel, delayed
    from sktransfer.backbones import loaded as loaded_backbones

    images, labels = digits
    X, y = images[:24], labels[:24] % 3
    for weights in (None, resnet_file):  # a random init, and a weights file
        loaded_backbones.clear()
        first = _fit_resnet_proba(X, y, weights)  # the loader's cache misses
        np.testing.assert_array_equal(_fit_resnet_proba(X, y, weights), first)  # and hits
        # A fresh loky worker starts with an empty cache.
        [in_worker] = Parallel(n_jobs=2, backend="loky")(
            [delayed(_fit_resnet_proba)(X, y, weights)])
        np.testing.assert_array_equal(in_worker, first)


# -- scikit-learn habits -----------------------------------------------------


def test_early_stopping_true_means_a_patience_of_five(flat_digits):
    X, y = flat_digits
    clf = FineTunedClassifier(mlp, lr=0.1, schedule=None, max_epochs=30, early_stopping=True,
                              validation_fraction=0.5, batch_size=64,
                              random_state=0).fit(X[:200], y[:200])
    assert dict(clf.net_.callbacks_)["early_stopping"].patience == 5
    # stopped five epochs after the best one
    assert len(clf.history_) < 30
    assert len(clf.history_) - int(np.argmin(clf.history_[:, "valid_loss"])) - 1 == 5


@pytest.mark.parametrize("Estimator", [FineTunedClassifier, FineTunedRegressor])
def test_feature_names_and_set_output(flat_digits, Estimator):
    X, y = flat_digits
    est = Estimator(mlp, lr=0.01, max_epochs=1, random_state=0).fit(X, y)
    prefix = Estimator.__name__.lower()
    names = est.get_feature_names_out()
    assert list(names) == [f"{prefix}{i}" for i in range(16)]
    embeddings = est.transform(X[:5])
    frame = est.set_output(transform="pandas").transform(X[:5])
    assert list(frame.columns) == list(names)
    np.testing.assert_array_equal(frame.to_numpy(), embeddings)
    # clone keeps the output setting, and predictions stay arrays
    assert isinstance(clone(est).fit(X, y).transform(X[:2]), type(frame))
    assert isinstance(est.predict(X[:5]), np.ndarray)


# -- chaining under clone ------------------------------------------------------


@pytest.fixture(scope="module")
def source(flat_digits):
    """A model trained on the source task: the digit modulo 5."""
    X, y = flat_digits
    return FineTunedClassifier(mlp, lr=0.01, max_epochs=3, random_state=0).fit(X, y % 5)


def _state(estimator):
    return copy.deepcopy(estimator.backbone_.module.state_dict())


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_fitted_backbone_survives_clone_search_and_cross_validation(flat_digits, source):
    from sklearn.frozen import FrozenEstimator
    from sklearn.model_selection import cross_val_score

    X, y = flat_digits
    before = _state(source)
    target = FineTunedClassifier(backbone=source, freeze="backbone", max_epochs=2,
                                 random_state=0)
    assert clone(target).backbone is source
    pipe = make_pipeline(StandardScaler(), target)
    assert clone(pipe)[-1].backbone is source
    search = GridSearchCV(pipe, {"finetunedclassifier__lr": [1e-3, 1e-2]}, cv=2).fit(X, y)
    assert search.best_estimator_[-1].backbone is source
    # the transferred features, not a random start: with a frozen backbone
    # the best model embeds exactly as the source does
    np.testing.assert_array_equal(search.best_estimator_[-1].transform(X[:5]),
                                  source.transform(X[:5]))
    scores = cross_val_score(FineTunedClassifier(backbone=FrozenEstimator(source), lr=0.01,
                                                 max_epochs=2, random_state=0), X, y, cv=2)
    assert scores.min() > 0.3  # chance is 0.1
    assert_same_state(_state(source), before)  # the source is never modified


def test_unfitted_estimator_as_backbone_still_clones_and_is_refused(flat_digits):
    X, y = flat_digits
    unfitted = FineTunedClassifier(mlp)
    target = FineTunedClassifier(backbone=unfitted, max_epochs=1)
    assert clone(target).backbone is not unfitted
    with pytest.raises(ValueError, match="not fitted; fit it first"):
        target.fit(X, y)


# -- batches of one sample -------------------------------------------------------


def bn_mlp():
    return nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU())


def test_batch_size_one_with_batchnorm_says_what_to_change(flat_digits):
    X, y = flat_digits
    with pytest.raises(ValueError, match=r"batch_size=1 .* BatchNorm layers \['backbone.1'\] "
                                         r".*use batch_size >= 2"):
        FineTunedClassifier(bn_mlp, batch_size=1, max_epochs=1).fit(X[:20], y[:20])
    # frozen BatchNorm stays in evaluation mode: one sample per batch trains
    FineTunedClassifier(bn_mlp, batch_size=1, freeze="backbone", max_epochs=1).fit(X[:20],
                                                                                   y[:20])
    # a remainder batch of one sample is dropped
    clf = FineTunedClassifier(bn_mlp, batch_size=8, max_epochs=1).fit(X[:17], y[:17])
    assert clf.history_[0, "train_batch_count"] == 2


def test_early_stopping_leaving_one_training_sample_says_what_to_change(flat_digits):
    X, y = flat_digits
    y = y % 2
    reg = FineTunedRegressor(bn_mlp, early_stopping=2, validation_fraction=0.5, max_epochs=1)
    with pytest.raises(ValueError, match=r"1 training sample after holding out "
                                         r"validation_fraction=0.5 .*BatchNorm.*more samples, "
                                         r"a smaller validation_fraction or early_stopping=None"):
        reg.fit(X[:2], y[:2])


def test_batch_size_one_image_backbone_with_spatial_batchnorm_trains(digits):
    images, labels = digits
    # BatchNorm2d over 8x8 maps has 64 values per channel even for one image.
    body = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3, padding=1),
                         nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    X = (images[:12].reshape(12, -1) / 255.0).astype(np.float32)
    clf = FineTunedClassifier(body, batch_size=1, max_epochs=1, random_state=0)
    clf.fit(X, labels[:12])
    assert clf.history_[0, "train_batch_count"] == 12


# -- memory after training -------------------------------------------------------


def _optimizer_tensors(clf):
    return [v for state in clf.net_.optimizer_.state.values() for v in state.values()
            if isinstance(v, torch.Tensor)]


def test_training_state_is_released_after_fit(flat_digits):
    X, y = flat_digits
    clf = FineTunedClassifier(mlp, lr=0.01, max_epochs=3, early_stopping=1,
                              random_state=0).fit(X, y)
    assert _optimizer_tensors(clf) == []
    assert dict(clf.net_.callbacks_)["early_stopping"].best_model_weights_ is None
    assert all(p.grad is None for p in clf._model().parameters())
    kept = clone(clf).set_params(keep_optimizer=True).fit(X, y)
    tensors = _optimizer_tensors(kept)
    assert len(tensors) >= 2 * len(list(kept._model().parameters()))  # Adam's two moments
    assert all(t.device.type == "cpu" for t in tensors)


@pytest.mark.gpu
def test_cuda_memory_returns_to_its_level_before_fit(flat_digits):
    X, y = flat_digits
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    clf = FineTunedClassifier(mlp, device="cuda", l2sp=0.01, lr=0.01, max_epochs=3,
                              early_stopping=1, class_weight="balanced",
                              random_state=0).fit(X, y)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before
    clf.set_params(keep_optimizer=True).fit(X, y)
    assert torch.cuda.memory_allocated() == before
    clf.partial_fit(X, y)  # the kept state goes back to the GPU for training
    assert torch.cuda.memory_allocated() == before


# -- what the parameters do ---------------------------------------------------------


def test_class_weight_gives_a_heavily_weighted_class_more_predictions(flat_digits):
    X, y = flat_digits
    params = dict(lr=0.01, max_epochs=2, random_state=0)
    plain = FineTunedClassifier(mlp, **params).fit(X, y).predict(X)
    weighted = FineTunedClassifier(mlp, class_weight={3: 20.0}, **params).fit(X, y).predict(X)
    assert (weighted == 3).sum() > 1.5 * (plain == 3).sum()


def test_regressor_early_stopping_stops_on_a_plateau_and_restores_the_best_epoch(flat_digits):
    X, _ = flat_digits
    # A target the inputs say nothing about: the validation loss only gets worse.
    y = np.random.RandomState(0).normal(size=len(X))
    snapshots = _Snapshots()
    reg = FineTunedRegressor(mlp, lr=0.05, schedule=None, max_epochs=30, early_stopping=3,
                             validation_fraction=0.25, callbacks=[snapshots],
                             random_state=0).fit(X, y)
    valid_loss = reg.history_[:, "valid_loss"]
    best = int(np.argmin(valid_loss))
    assert len(reg.history_) == best + 1 + 3 < 30
    kept = dict(reg.net_.callbacks_)["_Snapshots"].states[best]
    for key, value in reg._model().state_dict().items():
        torch.testing.assert_close(value, kept[key], rtol=0, atol=0)


def test_worker_processes_give_the_same_model(flat_digits):
    X, y = flat_digits
    params = dict(lr=0.01, dropout=0.2, head=(16,), max_epochs=2, batch_size=64,
                  random_state=0)
    in_process = FineTunedClassifier(mlp, **params).fit(X, y)
    workers = FineTunedClassifier(mlp, num_workers=1, **params).fit(X, y)
    np.testing.assert_array_equal(workers.predict_proba(X), in_process.predict_proba(X))


def test_regressor_target_scaling_is_public_and_maps_back_predictions(flat_digits):
    X, digit = flat_digits
    y = np.c_[digit[:80] * 10.0 + 3, -digit[:80]]
    reg = FineTunedRegressor(tiny_mlp, **FAST).fit(X[:80], y)
    np.testing.assert_allclose(reg.target_mean_, y.mean(axis=0))
    np.testing.assert_allclose(reg.target_scale_, y.std(axis=0))
    with pytest.raises(NotFittedError):
        FineTunedRegressor(tiny_mlp).target_mean_

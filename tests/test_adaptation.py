"""Domain adaptation from the target domain's unlabelled samples (issue 21)."""

import pickle

import numpy as np
import pytest
import sklearn
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, PredefinedSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from torch import nn

import sktransfer
from sktransfer import FineTunedClassifier, FineTunedRegressor
from sktransfer.scorers import DeepEmbeddedValidation, PredictionEntropyScorer
from sktransfer.training.adaptation import coral_loss, mmd_loss

FAST = dict(lr=0.05, max_epochs=4, batch_size=32, random_state=0)


def mlp():
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())


@pytest.fixture(scope="module")
def shift(digits):
    """Source: 300 clean digits (64 features); target: 300 others, dimmed and noisy."""
    images, labels = digits
    X = (images[:600].reshape(600, -1) / 255.0).astype(np.float32)
    y = labels[:600]
    rng = np.random.RandomState(0)
    Xt = np.clip(0.6 * X[300:] + 0.3 + rng.normal(0, 0.15, X[300:].shape), 0, 1)
    return X[:300], y[:300], Xt.astype(np.float32), y[300:]


def _joint(shift):
    Xs, ys, Xt, _ = shift
    return np.concatenate([Xs, Xt]), np.concatenate([ys, -np.ones(len(Xt), int)])


def _distance(est, Xs, Xt, fn):
    with torch.no_grad():
        return float(fn(torch.from_numpy(est.transform(Xs)), torch.from_numpy(est.transform(Xt))))


@pytest.fixture(scope="module")
def source_only(shift):
    Xs, ys, _, _ = shift
    return FineTunedClassifier(mlp, **FAST).fit(Xs, ys)


@pytest.mark.parametrize("method, distance", [("coral", coral_loss), ("mmd", mmd_loss),
                                              ("dann", None)])
def test_each_method_trains_and_moves_the_target_towards_the_source(shift, source_only, method,
                                                                    distance):
    Xs, ys, Xt, _ = shift
    X, y = _joint(shift)
    plain = source_only
    adapted = FineTunedClassifier(mlp, adaptation=method, adaptation_weight=5.0, **FAST).fit(X, y)
    assert set(adapted.classes_) == set(range(10))  # -1 is no class
    losses = [b["adaptation_loss"] for epoch in adapted.history_ for b in epoch["batches"]]
    assert len(losses) == sum(len(e["batches"]) for e in adapted.history_)
    if distance is None:
        # DANN: the domain classifier's loss stays near chance (ln 2 per
        # sample, times the weight): the backbone keeps the domains apart no
        # better than a coin.
        last = np.mean(losses[-len(adapted.history_[-1, "batches"]):]) / 5.0
        assert last > 0.5
        return
    assert _distance(adapted, Xs, Xt, distance) < _distance(plain, Xs, Xt, distance)


def test_mmd_cannot_be_lowered_by_shrinking_the_embedding():
    # The collapse of a small MLP's embedding at MMD weights of 0.2 and more:
    # with a detached bandwidth, scaling both batches down lowered the term,
    # so its gradient shrank the embedding towards a point.
    g = torch.Generator().manual_seed(0)
    source, target = torch.randn(32, 8, generator=g), torch.randn(32, 8, generator=g) + 0.5
    scale = torch.tensor(1.0, requires_grad=True)
    loss = mmd_loss(scale * source, scale * target)
    loss.backward()
    assert float(loss) > 0.05
    assert abs(float(scale.grad)) < 1e-4 * float(loss)
    torch.testing.assert_close(mmd_loss(0.01 * source, 0.01 * target), loss.detach())


def test_the_mmd_weight_warms_up_over_the_fit():
    # As DANN's reversed gradient does: the embedding first learns the labelled
    # task (without it, MMD at 0.2 collapsed the tests' MLP on some seeds).
    from sktransfer.training.adaptation import DomainAdaptation, dann_warmup

    g = torch.Generator().manual_seed(0)
    source, target = torch.randn(16, 4, generator=g), torch.randn(16, 4, generator=g) + 1
    term = DomainAdaptation("mmd", 0.5, 4)
    for progress in (0.0, 0.1, 1.0):
        term.progress = progress
        expected = 0.5 * dann_warmup(progress) * mmd_loss(source, target)
        torch.testing.assert_close(term(source, target), expected)
    coral = DomainAdaptation("coral", 0.5, 4)  # CORAL trains at its weight from the start
    torch.testing.assert_close(coral(source, target), 0.5 * coral_loss(source, target))


def test_sample_domain_or_minus_one_give_the_same_model(shift):
    X, y = _joint(shift)
    domain = np.where(y == -1, -2, 1)
    a = FineTunedClassifier(mlp, adaptation="coral", **FAST).fit(X, y)
    b = FineTunedClassifier(mlp, adaptation="coral", **FAST).fit(X, y, sample_domain=domain)
    c = FineTunedClassifier(mlp, adaptation="coral", **FAST).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    np.testing.assert_array_equal(a.predict_proba(X), c.predict_proba(X))  # same seed


def test_labelled_target_samples_join_the_supervised_loss(shift):
    Xs, ys, Xt, yt = shift
    X = np.concatenate([Xs, Xt])
    y = np.concatenate([ys, yt])  # every target sample labelled
    domain = np.r_[np.ones(len(ys), int), -np.ones(len(yt), int)]
    clf = FineTunedClassifier(mlp, adaptation="mmd", **FAST).fit(X, y, sample_domain=domain)
    assert sum(b["train_batch_size"] for b in clf.history_[0]["batches"]) == len(X)


def test_regressor_takes_nan_for_unlabelled_targets(shift):
    Xs, ys, Xt, yt = shift
    X = np.concatenate([Xs, Xt])
    y = np.concatenate([ys.astype(float), np.full(len(yt), np.nan)])
    reg = FineTunedRegressor(mlp, adaptation="coral", **FAST).fit(X, y)
    assert np.isfinite(reg.predict(Xt)).all()
    # without adaptation, unlabelled rows are refused
    domain = np.r_[np.ones(300, int), -np.ones(300, int)]
    with pytest.raises(ValueError, match="adaptation=None trains on labels only"):
        FineTunedRegressor(mlp, **FAST).fit(X, y, sample_domain=domain)


def test_minus_one_is_a_class_without_adaptation(shift):
    Xs, ys, _, _ = shift
    y = np.where(ys % 2, 1, -1)
    clf = FineTunedClassifier(mlp, **FAST).fit(Xs, y)
    assert clf.classes_.tolist() == [-1, 1]


@pytest.mark.parametrize("params, fit_kwargs, message", [
    ({"adaptation": "coral"}, "no_target", "needs samples of the target domain"),
    ({}, "target_domain", "adaptation=None trains on labels only"),
    ({"adaptation": "dann", "objective": "contrastive"}, "unlabelled", "objective='contrastive'"),
    ({"adaptation": "coral", "freeze": "backbone"}, "unlabelled", "freezes all of the backbone"),
    ({"adaptation": "wasserstein"}, "unlabelled", "adaptation"),
    ({"adaptation": "coral"}, "bad_domain", "nonzero integers"),
    ({"adaptation": "coral"}, "unlabelled_source", "source samples"),
])
def test_clear_errors(shift, params, fit_kwargs, message):
    Xs, ys, _, _ = shift
    X, y = _joint(shift)
    clf = FineTunedClassifier(mlp, **{**FAST, **params})
    args = {"no_target": (Xs, ys, {}), "unlabelled": (X, y, {}),
            "target_domain": (X, y, {"sample_domain": np.where(y == -1, -1, 1)}),
            "bad_domain": (X, y, {"sample_domain": np.zeros(len(y), int)}),
            "unlabelled_source": (X, y, {"sample_domain": np.ones(len(y), int)})}[fit_kwargs]
    with pytest.raises(ValueError, match=message):
        clf.fit(args[0], args[1], **args[2])


def test_partial_fit_refuses_adaptation(shift):
    Xs, ys, _, _ = shift
    with pytest.raises(ValueError, match="partial_fit does not train the adaptation"):
        FineTunedClassifier(mlp, adaptation="coral", **FAST).partial_fit(Xs, ys)


def test_combines_with_head_first_l2sp_and_early_stopping(shift):
    X, y = _joint(shift)
    clf = FineTunedClassifier(mlp, adaptation="dann", freeze_epochs=1, l2sp=0.01,
                              early_stopping=2, **FAST).fit(X, y)
    # early stopping validates on labelled (source) rows only: every score is finite
    assert all(np.isfinite(e["valid_loss"]) for e in clf.history_)


def test_clone_pickle_and_save_round_trips(shift, tmp_path):
    Xs, _, Xt, _ = shift
    X, y = _joint(shift)
    torch.manual_seed(0)
    # a module, not a factory: model files hold modules
    clf = FineTunedClassifier(mlp(), adaptation="dann", adaptation_weight=0.3,
                              **FAST).fit(X, y)
    assert clone(clf).get_params()["adaptation"] == "dann"
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_allclose(again.predict_proba(Xt), clf.predict_proba(Xt), atol=1e-6)
    sktransfer.save(clf, tmp_path / "m.skt")
    loaded = sktransfer.load(tmp_path / "m.skt")
    assert loaded.adaptation == "dann" and loaded.adaptation_weight == 0.3
    np.testing.assert_allclose(loaded.predict_proba(Xt), clf.predict_proba(Xt), atol=1e-6)


@pytest.mark.parametrize("scorer", [PredictionEntropyScorer(), DeepEmbeddedValidation()],
                         ids=["entropy", "dev"])
def test_routing_through_pipeline_and_grid_search_with_an_unsupervised_scorer(shift, scorer):
    Xs, ys, Xt, yt = shift
    # the target rows keep their labels: only the routed sample_domain marks them, so
    # a fit or a scorer that did not receive it would find no target row and fail
    X, y = np.concatenate([Xs, Xt]), np.concatenate([ys, yt])
    domain = np.r_[np.ones(len(ys), int), -np.ones(len(yt), int)]
    with sklearn.config_context(enable_metadata_routing=True):
        clf = FineTunedClassifier(mlp, adaptation="coral", **FAST).set_fit_request(
            sample_domain=True)
        pipe = make_pipeline(FunctionTransformer(), clf)
        pipe.fit(X, y, sample_domain=domain)
        # one fold: train on everything but a quarter of each domain, score on that quarter
        fold = np.where(np.arange(len(y)) % 4 == 0, 0, -1)
        search = GridSearchCV(pipe, {"finetunedclassifier__adaptation_weight": [0.1, 10.0]},
                              cv=PredefinedSplit(fold), scoring=scorer)
        search.fit(X, y, sample_domain=domain)
    scores = search.cv_results_["mean_test_score"]
    # (entropy is never negative; DEV's control variate can push its estimate either way)
    assert np.all(np.isfinite(scores))
    if isinstance(scorer, PredictionEntropyScorer):
        assert np.all(scores <= 0)


def test_entropy_scorer_without_routing_uses_minus_one_rows(shift):
    X, y = _joint(shift)
    clf = FineTunedClassifier(mlp, adaptation="coral", **FAST).fit(X, y)
    proba = clf.predict_proba(X[y == -1])
    expected = np.mean(np.sum(proba * np.log(np.clip(proba, 1e-12, None)), axis=1))
    assert PredictionEntropyScorer()(clf, X, y) == pytest.approx(expected, rel=1e-5)


def test_default_weight_is_the_documented_one_per_method(shift):
    from sktransfer.finetune.docs import PARAMS_DOC
    from sktransfer.training.adaptation import DEFAULT_WEIGHTS, DomainAdaptation

    # documented, in the parameter's docstring, as these values
    assert DEFAULT_WEIGHTS == {"coral": 300.0, "mmd": 0.3, "dann": 1.0}
    doc = " ".join(PARAMS_DOC.split("adaptation_weight :")[1].split())
    assert doc.startswith("float or None, default=None")
    for method, weight in DEFAULT_WEIGHTS.items():
        assert f'``{weight:g}`` for ``"{method}"``' in doc
    assert FineTunedClassifier().adaptation_weight is None
    assert FineTunedRegressor().adaptation_weight is None
    for method, weight in DEFAULT_WEIGHTS.items():
        assert DomainAdaptation(method, None, 16).weight == weight
        assert DomainAdaptation(method, 0.7, 16).weight == 0.7
    # a fit at the default trains with the method's weight; None survives clone
    X, y = _joint(shift)
    clf = FineTunedClassifier(mlp, adaptation="mmd", **{**FAST, "max_epochs": 1}).fit(X, y)
    assert clf.net_.adaptation_.weight == DEFAULT_WEIGHTS["mmd"]
    assert clone(clf).get_params()["adaptation_weight"] is None
    with pytest.raises(ValueError, match="adaptation_weight"):
        FineTunedClassifier(mlp, adaptation="mmd", adaptation_weight=-1.0, **FAST).fit(X, y)


SLOW_MLP = dict(lr=3e-3, max_epochs=30, batch_size=64)


@pytest.fixture(scope="module")
def source_only_30_epochs(shift):
    Xs, ys, Xt, yt = shift
    return [FineTunedClassifier(mlp, random_state=seed, **SLOW_MLP).fit(Xs, ys).score(Xt, yt)
            for seed in (0, 1)]


@pytest.mark.parametrize("method", ["coral", "mmd", "dann"])
def test_the_default_weight_does_not_wreck_a_small_mlp(shift, source_only_30_epochs, method):
    # The failure: at adaptation_weight=1, MMD and DANN left an MLP on
    # clean -> noisy digits far below source-only training (here 0.12 and 0.15
    # against 0.47). At the defaults each method stays within a margin of
    # source-only on the target, averaged over two seeds (the margin is loose:
    # the benchmark, not this test, measures the gain).
    _, _, Xt, yt = shift
    X, y = _joint(shift)
    adapted = [FineTunedClassifier(mlp, adaptation=method, random_state=seed, **SLOW_MLP)
               .fit(X, y).score(Xt, yt) for seed in (0, 1)]
    assert np.mean(adapted) >= np.mean(source_only_30_epochs) - 0.05

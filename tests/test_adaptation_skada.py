"""sktransfer's features and fine-tuners compose with skada (issue 21)."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from sktransfer import FineTunedClassifier, PretrainedFeatureTransformer

skada = pytest.importorskip("skada")  # in the dev extra; skipped only where not installed


@pytest.fixture(scope="module")
def shifted(shifted_digits):
    X, y, domain = shifted_digits
    return X, y.copy(), domain


def _frozen_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.Tanh())


@pytest.mark.parametrize("adapter", ["CORALAdapter", "SubspaceAlignmentAdapter"])
def test_frozen_features_then_skada_shallow_adapter_in_one_pipeline(shifted, adapter):
    X, y, domain = shifted
    extra = {"n_components": 10} if adapter == "SubspaceAlignmentAdapter" else {}
    pipe = skada.make_da_pipeline(PretrainedFeatureTransformer(_frozen_net()),
                                  getattr(skada, adapter)(**extra),
                                  LogisticRegression(max_iter=500))
    # skada's pipeline masks the target labels itself (in place: give it a copy)
    pipe.fit(X, y.copy(), sample_domain=domain)
    target = domain < 0
    pred = pipe.predict(X[target], sample_domain=domain[target])
    assert pred.shape == (200,) and set(pred) <= set(y)
    # (skada's pipeline score() treats target rows as masked: score the predictions)
    assert np.mean(pred == y[target]) > 0.3


def test_fine_tuner_in_a_skada_pipeline_with_skada_scorers(shifted):
    import sklearn
    from skada.metrics import PredictionEntropyScorer

    X, y, domain = shifted
    with sklearn.config_context(enable_metadata_routing=True):
        clf = FineTunedClassifier(nn.Sequential(nn.Linear(64, 16), nn.ReLU()),
                                  adaptation="coral", lr=0.05, max_epochs=2, random_state=0)
        # skada's pipeline masks the target labels (y = -1) and routes sample_domain
        pipe = skada.make_da_pipeline(clf.set_fit_request(sample_domain=True))
        pipe.fit(X, y.copy(), sample_domain=domain)
        fitted = pipe[-1].base_estimator_
        assert fitted.classes_.tolist() == list(range(10))
        score = PredictionEntropyScorer()(pipe, X, np.where(domain < 0, -1, y),
                                          sample_domain=domain)
    assert np.isfinite(score) and score <= 0


def test_skada_scorers_call_the_fine_tuner_directly(shifted):
    from skada.metrics import PredictionEntropyScorer as SkadaEntropy

    from sktransfer.scorers import PredictionEntropyScorer

    X, y, domain = shifted
    clf = FineTunedClassifier(nn.Sequential(nn.Linear(64, 16), nn.ReLU()), adaptation="coral",
                              lr=0.05, max_epochs=2, random_state=0)
    masked = np.where(domain < 0, -1, y)
    clf.fit(X, masked, sample_domain=domain)
    # skada passes sample_domain to predict_proba; the prediction does not depend on it
    ours = PredictionEntropyScorer()(clf, X, masked, sample_domain=domain)
    theirs = SkadaEntropy()(clf, X, masked, sample_domain=domain)
    # skada's "mean" averages over the classes too (and adds 1e-7 inside the log)
    assert theirs == pytest.approx(ours / len(clf.classes_), rel=1e-4)
    # two more of skada's scorers that call predict / predict_proba (and, for circular
    # validation, fit) on the fine-tuner with sample_domain
    from skada.metrics import CircularValidation, SoftNeighborhoodDensity

    for scorer in (SoftNeighborhoodDensity(), CircularValidation()):
        assert np.isfinite(scorer(clf, X, masked.copy(), sample_domain=domain))
    np.testing.assert_array_equal(clf.predict(X, sample_domain=domain), clf.predict(X))
    with pytest.raises(ValueError, match="one value per sample"):
        clf.predict_proba(X, sample_domain=domain[:10])
    with pytest.raises(ValueError, match="nonzero integers"):
        clf.predict(X, sample_domain=np.zeros(len(X), int))


def test_skada_weighted_and_mixval_scorers_in_cross_validation(shifted):
    """ImportanceWeightedScorer scores with sample_weight, MixValScorer passes sample_domain
    to score: both work on the fine-tuner inside cross_validate (issue 29)."""
    import sklearn
    from skada.metrics import ImportanceWeightedScorer, MixValScorer
    from sklearn.model_selection import ShuffleSplit, cross_validate

    X, y, domain = shifted
    masked = np.where(domain < 0, -1, y)
    with sklearn.config_context(enable_metadata_routing=True):
        clf = FineTunedClassifier(_frozen_net(), adaptation="coral", lr=0.05, max_epochs=2,
                                  freeze="none", random_state=0)
        clf.set_fit_request(sample_domain=True).set_score_request(sample_weight=True)
        for scorer in (ImportanceWeightedScorer(), MixValScorer()):
            scores = cross_validate(clf, X, masked, params={"sample_domain": domain},
                                    scoring=scorer, error_score="raise",
                                    cv=ShuffleSplit(2, test_size=0.3, random_state=0))
            assert np.isfinite(scores["test_score"]).all(), type(scorer).__name__
    # score itself weighs by sample_weight: the weight on one half decides the accuracy
    clf = FineTunedClassifier(_frozen_net(), lr=0.05, max_epochs=2, random_state=0)
    source = domain > 0
    clf.fit(X[source], y[source])
    right = clf.predict(X[source]) == y[source]
    assert 0 < right.mean() < 1
    assert clf.score(X[source], y[source], sample_weight=right.astype(float)) == 1.0
    assert clf.score(X[source], y[source], sample_weight=(~right).astype(float)) == 0.0

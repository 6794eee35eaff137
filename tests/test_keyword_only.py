"""Parameters after the first are keyword-only; a positional call warns for one release."""

import inspect
import warnings

import numpy as np
import pytest
from sklearn.base import BaseEstimator, clone
from torch import nn

import sktransfer
import sktransfer.scorers
import sktransfer.study
from conftest import tiny_mlp
from sktransfer import FineTunedClassifier, FineTunedRegressor, PretrainedFeatureTransformer
from sktransfer._utils.aliases import REMOVED_IN
from sktransfer._utils.signature import positional_deprecated
from sktransfer.regularizers import L2SP
from sktransfer.scorers import DeepEmbeddedValidation, PredictionEntropyScorer
from sktransfer.study import TransferReport, WithSource

#: Every public estimator-like class, and the parameters it still takes by position.
POSITIONAL = {
    PretrainedFeatureTransformer: ["backbone"],
    FineTunedClassifier: ["backbone"],
    FineTunedRegressor: ["backbone"],
    PredictionEntropyScorer: [],
    DeepEmbeddedValidation: ["domain_classifier"],
    WithSource: ["estimator"],
    L2SP: ["alpha"],
    TransferReport: ["results"],
}


def kinds(cls):
    """``[(name, kind)]`` of ``cls.__init__``'s parameters after ``self``."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return [(p.name, p.kind) for p in params]


@pytest.mark.parametrize("cls", list(POSITIONAL), ids=lambda cls: cls.__name__)
def test_only_the_leading_parameter_is_positional(cls):
    params = kinds(cls)
    n = len(POSITIONAL[cls])
    assert [name for name, _ in params[:n]] == POSITIONAL[cls]
    assert all(kind == inspect.Parameter.POSITIONAL_OR_KEYWORD for _, kind in params[:n])
    assert params[n:], "nothing keyword-only"
    assert all(kind == inspect.Parameter.KEYWORD_ONLY for _, kind in params[n:]), params


def test_every_public_estimator_is_listed():
    found = set()
    for module in (sktransfer, sktransfer.scorers, sktransfer.study):
        for name in getattr(module, "__all__", dir(module)):
            obj = getattr(module, name)
            if (inspect.isclass(obj) and not name.startswith("_")
                    and obj.__module__.startswith("sktransfer")
                    and (issubclass(obj, BaseEstimator) or obj.__init__ is not object.__init__)):
                found.add(obj)
    assert found <= set(POSITIONAL), found - set(POSITIONAL)


def _positional_call(cls, *args):
    with pytest.warns(FutureWarning) as record:
        obj = cls(*args)
    moved = [w for w in record if "by keyword" in str(w.message)]
    assert len(moved) == 1, [str(w.message) for w in record]
    assert moved[0].filename == __file__  # points at the call, not at the wrapper
    return obj, str(moved[0].message)


def test_a_positional_call_warns_naming_the_parameters_and_still_sets_them():
    pft, message = _positional_call(PretrainedFeatureTransformer, tiny_mlp, None, ["0"], "avg")
    assert (pft.backbone, pft.weights, pft.layers, pft.pooling) == (tiny_mlp, None, ["0"], "avg")
    assert message.startswith("Pass weights, layers, pooling to PretrainedFeatureTransformer "
                              "by keyword (weights=..., layers=..., pooling=...)")
    assert REMOVED_IN in message


@pytest.mark.parametrize("cls", [FineTunedClassifier, FineTunedRegressor],
                         ids=lambda cls: cls.__name__)
def test_a_fine_tuner_positional_call_names_its_own_class(cls):
    est, message = _positional_call(cls, tiny_mlp, None, None, 0.25)
    assert (est.weights, est.head, est.dropout) == (None, None, 0.25)
    assert f"Pass weights, head, dropout to {cls.__name__} by keyword" in message


def test_positional_values_map_in_the_declared_order():
    # class_weight sits between augment and device in FineTunedClassifier's
    # (formerly positional) order; the value at its place must land there.
    names = [name for name, _ in kinds(FineTunedClassifier)]
    defaults = {name: p.default for name, p in
                inspect.signature(FineTunedClassifier.__init__).parameters.items()}
    upto = names[1:names.index("class_weight") + 1]
    values = [defaults[name] for name in upto[:-1]] + ["balanced"]
    clf, message = _positional_call(FineTunedClassifier, tiny_mlp, *values)
    assert clf.class_weight == "balanced"
    assert clf.get_params()["class_weight"] == "balanced"
    assert message.count("=...") == len(upto)


def test_other_estimators_positional_calls_warn_and_set():
    scorer, _ = _positional_call(PredictionEntropyScorer, 1e-6)
    assert scorer.eps == 1e-6
    dev, message = _positional_call(DeepEmbeddedValidation, None, 0.5, 3)
    assert (dev.validation_size, dev.random_state) == (0.5, 3)
    assert "Pass validation_size, random_state to DeepEmbeddedValidation" in message
    X, y = np.zeros((4, 2)), np.array([0, 1, 0, 1])
    with_source, _ = _positional_call(WithSource, FineTunedClassifier(tiny_mlp), X, y)
    assert with_source.X_source is X and with_source.y_source is y
    penalty, _ = _positional_call(L2SP, 0.5, nn.Linear(2, 2))
    assert penalty.alpha == 0.5 and penalty.names == ["weight", "bias"]


def test_keyword_calls_and_clone_warn_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = FineTunedRegressor(tiny_mlp, weights=None, dropout=0.25, lr=0.1)
        copy = clone(est)
        repr(copy)
        PretrainedFeatureTransformer("torchvision:resnet18", layers=["layer4"])
        PredictionEntropyScorer(eps=1e-6)
        DeepEmbeddedValidation(None, validation_size=0.5)
        L2SP(0.5, backbone=nn.Linear(2, 2))
    assert copy.get_params() == est.get_params()


@pytest.mark.parametrize("cls", [PretrainedFeatureTransformer, FineTunedClassifier,
                                 FineTunedRegressor], ids=lambda cls: cls.__name__)
def test_get_params_sees_the_real_signature(cls):
    est = cls(tiny_mlp, random_state=3)
    params = est.get_params(deep=False)
    assert list(params) == sorted(name for name, _ in kinds(cls))
    assert params["backbone"] is tiny_mlp and params["random_state"] == 3
    assert clone(est).get_params(deep=False) == params
    assert cls.__init__.__wrapped__.__qualname__.endswith("__init__")


def test_passing_a_value_twice_or_too_many_values_fails():
    with pytest.raises(TypeError, match="multiple values for weights"):
        PretrainedFeatureTransformer(tiny_mlp, None, weights=None)
    n = len(kinds(PredictionEntropyScorer))
    with pytest.raises(TypeError):
        PredictionEntropyScorer(*range(n + 1))


def test_the_wrapper_on_a_plain_function():
    @positional_deprecated
    def scale(x, *, factor=2.0):
        """Doc."""
        return x * factor

    assert scale.__doc__ == "Doc." and scale.__name__ == "scale"
    assert str(inspect.signature(scale)) == "(x, *, factor=2.0)"
    with pytest.warns(FutureWarning, match=r"Pass factor to .*scale by keyword"):
        assert scale(1.0, 3.0) == 3.0

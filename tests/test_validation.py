"""Parameters are validated in one declarative style, with one message shape."""

import numpy as np
import pytest
from torch import nn

from sktransfer import FineTunedClassifier, FineTunedRegressor, PretrainedFeatureTransformer
from sktransfer._utils.validation import InvalidParameterError
from sktransfer.transferability import knn_score, logme

from conftest import tiny_mlp

ESTIMATORS = [PretrainedFeatureTransformer, FineTunedClassifier, FineTunedRegressor]


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_every_parameter_but_the_backbone_has_declared_constraints(cls):
    # The backbone is checked when it is loaded; everything else at fit.
    params = set(cls().get_params(deep=False))
    assert set(cls._parameter_constraints) == params - {"backbone"}


@pytest.mark.parametrize("cls", ESTIMATORS)
@pytest.mark.parametrize("param, value, allowed", [
    ("batch_size", 0, "an integer >= 1"),
    ("num_workers", -1, "an integer >= 0"),
    ("precision", "fp8", "one of ('auto', 'fp32', 'bf16', 'fp16')"),
    ("verbose", "loud", "an integer >= 0, True or False"),
])
def test_shared_parameters_are_refused_alike_by_every_estimator(cls, param, value, allowed):
    X = np.random.RandomState(0).rand(8, 4).astype(np.float32)
    y = np.arange(8) % 2
    with pytest.raises(InvalidParameterError) as info:
        est = cls(tiny_mlp, **{param: value})
        est.fit(X) if cls is PretrainedFeatureTransformer else est.fit(X, y)
    message = str(info.value)
    # The parameter, what it takes and the value given, in that shape.
    assert message.startswith(f"{param} must be {allowed}")
    assert f"{param}={value!r}" in message
    # Code that catches either of the errors it used to raise keeps working.
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)


def test_a_bad_value_fails_fit_before_any_loading():
    # A backbone spec that could not even be loaded: the parameter error comes first.
    with pytest.raises(InvalidParameterError, match="lr must be a number > 0 or None"):
        FineTunedClassifier("torchvision:no_such_net", lr=-1).fit(np.zeros((2, 3)), [0, 1])


def test_public_functions_check_their_arguments_in_the_same_style():
    rng = np.random.RandomState(0)
    F, y = rng.rand(20, 3), np.arange(20) % 2
    with pytest.raises(InvalidParameterError, match="n_neighbors must be an integer >= 1; "
                                                    "got n_neighbors=0"):
        knn_score(F, y, n_neighbors=0)
    with pytest.raises(InvalidParameterError, match="regression must be True or False"):
        logme(F, y, regression="yes")


def test_module_backbones_are_not_validated_as_parameters():
    # Any nn.Module or factory is a backbone; it is not declared, not refused.
    X = np.random.RandomState(0).rand(4, 4).astype(np.float32)
    assert PretrainedFeatureTransformer(nn.Linear(4, 2)).fit_transform(X).shape == (4, 2)


def test_numpy_values_from_a_search_grid_are_accepted():
    # GridSearchCV over numpy arrays sets numpy scalars: np.str_, np.int64, np.bool_.
    X = np.random.RandomState(0).rand(12, 4).astype(np.float32)
    y = np.arange(12) % 2
    PretrainedFeatureTransformer(tiny_mlp, pooling=np.array(["avg"])[0],
                                 batch_size=np.int64(4), precision=np.str_("fp32"),
                                 verbose=np.int64(0)).fit(X)
    FineTunedClassifier(tiny_mlp, max_epochs=np.int64(1), lr=np.float32(0.01),
                        schedule=np.str_("cosine"), early_stopping=np.True_,
                        freeze=np.int64(0), distributed=np.str_("auto"),
                        objective=np.str_("cross_entropy")).fit(X, y)


def test_validation_fraction_is_not_checked_by_a_fit_that_holds_nothing_out():
    # A grid over early_stopping in [None, 5] and validation_fraction in [0, .2].
    X = np.random.RandomState(0).rand(12, 4).astype(np.float32)
    y = np.arange(12) % 2
    FineTunedClassifier(tiny_mlp, max_epochs=1, validation_fraction=0).fit(X, y)
    with pytest.raises(InvalidParameterError, match="validation_fraction must be"):
        FineTunedClassifier(tiny_mlp, max_epochs=1, early_stopping=2,
                            validation_fraction=0).fit(X, y)

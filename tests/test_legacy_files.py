"""Files written by an earlier sktransfer load and give the same outputs.

``tests/data/legacy`` holds pickles and ``.skt`` files written by sktransfer
0.1.0 before its modules were reorganized (``make_files.py`` there wrote
them): a release that moves code must still read what users saved.
"""

import os

import joblib
import numpy as np
import pytest

import sktransfer

HERE = os.path.join(os.path.dirname(__file__), "data", "legacy")
NAMES = ["transformer_module", "classifier_module", "regressor_module", "transformer_timm",
         "classifier_timm_groups", "transformer_hf"]


def inputs(expected):
    if "X" in expected:
        return expected["X"]
    return [str(t) for t in np.load(os.path.join(HERE, "texts.npy"))]


@pytest.mark.parametrize("reader", ["joblib", "skt"])
@pytest.mark.parametrize("name", NAMES)
def test_a_file_written_before_the_move_loads_and_gives_the_same_outputs(name, reader):
    pytest.importorskip("timm")
    pytest.importorskip("transformers")
    if reader == "joblib":
        est = joblib.load(os.path.join(HERE, f"{name}.pkl"))
    else:
        est = sktransfer.load(os.path.join(HERE, f"{name}.skt"))
    expected = np.load(os.path.join(HERE, f"{name}.npz"), allow_pickle=False)
    X = inputs(expected)
    for method in ("transform", "predict", "predict_proba"):
        if method in expected:
            np.testing.assert_allclose(getattr(est, method)(X), expected[method],
                                       rtol=1e-5, atol=1e-6, err_msg=f"{name} {method}")


def test_a_loaded_classifier_keeps_training():
    # The optimizer's state, the history and the penalty came through: the
    # fit continues from where the file left it.
    est = joblib.load(os.path.join(HERE, "classifier_module.pkl"))
    X = np.load(os.path.join(HERE, "classifier_module.npz"))["X"]
    n_epochs = len(est.history_)
    est.partial_fit(X, np.arange(len(X)) % 3)
    assert len(est.history_) == n_epochs + 1
    assert est.l2sp_ is not None


@pytest.mark.parametrize("name", NAMES)
def test_parameters_added_since_take_their_defaults(name):
    # Files written before prompt, sampling_rate, adaptation... existed hold
    # none of them: they read as the defaults (what that version did), so
    # get_params, clone and a refit work on a loaded estimator.
    import inspect

    from sklearn.base import clone

    pytest.importorskip("timm")
    pytest.importorskip("transformers")
    est = joblib.load(os.path.join(HERE, f"{name}.pkl"))
    signature = inspect.signature(type(est).__init__).parameters
    params = est.get_params(deep=False)
    assert set(params) == set(signature) - {"self"}
    for added in ("prompt", "sampling_rate", "max_duration", "adaptation"):
        if added in signature:
            assert params[added] == signature[added].default
    assert clone(est).get_params(deep=False).keys() == params.keys()

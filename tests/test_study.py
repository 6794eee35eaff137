"""compare_transfer: does transfer help here? Real digits, real training, real verdicts."""

import warnings

import numpy as np
import pytest
import torch
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from scipy import stats
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from sktransfer import FineTunedClassifier, FineTunedRegressor
from sktransfer.study import TransferReport, compare_transfer


def digits_cnn():
    """Two convolution blocks; the flattened maps are the embedding."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten())


def few_label_splits(y, per_class, n_splits, n_test, seed=0):
    """(train, test) pairs: ``per_class`` labelled images per class, a random test set."""
    rng = np.random.RandomState(seed)
    splits = []
    for _ in range(n_splits):
        train = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                                for c in np.unique(y)])
        rest = np.setdiff1d(np.arange(len(y)), train)
        splits.append((train, rng.choice(rest, n_test, replace=False)))
    return splits


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """These networks are tiny: a second thread only adds synchronization (on a
    busy 2-core machine, 15 times the CPU time)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images():
    """Digits as (N, 1, 8, 8) float32 in [0, 1], split into a source and a target half."""
    digits = load_digits()
    X = (digits.images[:, None] / 16).astype(np.float32)
    source, target = train_test_split(np.arange(len(X)), test_size=0.5,
                                      stratify=digits.target, random_state=0)
    return X, digits.target, source, target


@pytest.fixture(scope="module")
def flat_study():
    """A cheap study on flattened digits with a tiny MLP: three methods, three splits."""
    digits = load_digits()
    X, y = (digits.data / 16).astype(np.float32), digits.target
    splits = few_label_splits(y, 5, 3, 100)
    backbone = nn.Sequential(nn.Linear(64, 16), nn.ReLU())
    report = compare_transfer(X, y, backbone, methods=["scratch", "linear_probe", "fine_tune"],
                              cv=iter(splits),  # a one-shot iterator: drawn once, for all
                              estimator_params={"max_epochs": 3, "lr": 1e-2}, random_state=0)
    return report, X, y, splits, backbone


def test_the_intervals_are_paired_t_intervals_of_the_per_split_gains(flat_study):
    report = flat_study[0]
    scores = report.results.pivot(index="split", columns="method", values="score")
    for method in ("linear_probe", "fine_tune"):
        diff = scores[method] - scores["scratch"]
        low, high = stats.t.interval(0.95, len(diff) - 1, loc=diff.mean(),
                                     scale=stats.sem(diff))
        row = report.summary.loc[method]
        assert row["gain_vs_scratch"] == pytest.approx(diff.mean(), abs=1e-12)
        assert row["gain_ci_low"] == pytest.approx(low, abs=1e-12)
        assert row["gain_ci_high"] == pytest.approx(high, abs=1e-12)
        expected = "helps" if low > 0 else "hurts" if high < 0 else "no clear difference"
        assert row["verdict"] == expected
    assert report.summary.loc["scratch", "verdict"] == "baseline"
    assert np.isnan(report.summary.loc["scratch", "gain_vs_scratch"])
    assert report.summary["score_std"].tolist() == pytest.approx(
        scores[report.summary.index].std(ddof=1).tolist())


def test_every_method_gets_the_given_splits_even_from_a_one_shot_iterator(flat_study):
    report, X, y, splits, backbone = flat_study
    assert report.n_splits == 3
    assert report.results.groupby("method")["split"].apply(list).to_dict() == {
        "scratch": [0, 1, 2], "linear_probe": [0, 1, 2], "fine_tune": [0, 1, 2]}
    # The score of a split is that of the estimator trained and tested on that very pair.
    train, test = splits[2]
    direct = FineTunedClassifier(backbone, freeze="backbone", max_epochs=3, lr=1e-2,
                                 random_state=0).fit(X[train], y[train]).score(X[test], y[test])
    probe = report.results.query("method == 'linear_probe' and split == 2")["score"].item()
    assert probe == direct


def test_plot_draws_what_the_verdicts_are_decided_on(flat_study):
    """The paired gains over scratch with their intervals and zero marked, not the scores:
    a method marked "helps" has its interval right of the zero line."""
    report = flat_study[0]
    fig = report.plot()
    assert isinstance(fig, Figure)
    ax, = fig.axes
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2  # one per method but the baseline
    labels = [t.get_text() for t in ax.get_yticklabels()]
    summary = report.summary
    assert labels == [f"{m} ({summary.loc[m, 'verdict']})\naccuracy "
                      f"{summary.loc[m, 'score_mean']:.3f}" for m in ("linear_probe", "fine_tune")]
    for bar, m in zip(bars, ("linear_probe", "fine_tune")):
        x, _ = bar.lines[0].get_data()
        assert x[0] == pytest.approx(summary.loc[m, "gain_vs_scratch"])
    assert any(line.get_xdata()[0] == 0 for line in ax.lines if line.get_linestyle() == "--")
    assert "gain in accuracy over scratch" in ax.get_xlabel()


def degraded(X, blur=0.6, noise=0.1, seed=0):
    """The images as from another scanner: blurred, noisy, clipped to [0, 1]."""
    from scipy.ndimage import gaussian_filter

    blurred = np.stack([gaussian_filter(x, sigma=(0, blur, blur)) for x in X])
    noisy = blurred + np.random.RandomState(seed).normal(0, noise, X.shape)
    return np.clip(noisy, 0, 1).astype(np.float32)


def test_a_source_of_the_same_digits_helps_on_images_from_another_scanner(images):
    X, y, source, target = images
    clean = FineTunedClassifier(digits_cnn, lr=3e-3, max_epochs=10, batch_size=64,
                                random_state=0).fit(X[source], y[source])
    Xt, yt = degraded(X[target]), y[target]
    report = compare_transfer(Xt, yt, clean, methods=["scratch", "linear_probe"],
                              cv=few_label_splits(yt, 2, 5, 300),
                              estimator_params={"max_epochs": 30, "lr": 1e-2}, random_state=0)
    # seen: 0.736 vs 0.681, gain interval [+2.2, +8.7] points
    assert report.summary.loc["linear_probe", "verdict"] == "helps"
    assert report.summary.loc["linear_probe", "gain_ci_low"] > 0


def zeroed(module):
    """``module`` with every weight and bias set to zero: a destroyed checkpoint."""
    module.load_state_dict({k: torch.zeros_like(v) for k, v in module.state_dict().items()})
    return module


def test_a_destroyed_backbone_is_diagnosed_as_hurting(images):
    X, y, _, target = images
    Xt, yt = X[target], y[target]
    # A zero network gives the same (zero) features for every image: the
    # linear probe can only guess one class, while scratch re-initializes it.
    report = compare_transfer(Xt, yt, zeroed(digits_cnn()), methods=["scratch", "linear_probe"],
                              cv=few_label_splits(yt, 3, 3, 200),
                              estimator_params={"max_epochs": 10, "lr": 1e-2}, random_state=0)
    summary = report.summary
    assert summary.loc["linear_probe", "verdict"] == "hurts"
    assert summary.loc["linear_probe", "gain_ci_high"] < 0
    # constant features: every test image gets the same class, about 1 in 10 right
    assert summary.loc["linear_probe", "score_mean"] < 0.2
    assert summary.loc["scratch", "score_mean"] > 0.5


def test_regression_targets_are_studied_with_the_regressor_and_r2():
    rng = np.random.RandomState(0)
    X = rng.rand(90, 4).astype(np.float32)
    y = 3 * X[:, 0] - 2 * X[:, 1] + 0.05 * rng.randn(90)
    backbone = nn.Sequential(nn.Linear(4, 16), nn.Tanh())
    params = {"max_epochs": 30, "lr": 3e-2, "batch_size": 16}
    report = compare_transfer(X, y, backbone, methods=["scratch", "fine_tune", "l2sp"], cv=3,
                              estimator_params=params, random_state=0)
    assert report.task == "regression"
    assert report.summary["verdict"].tolist()[0] == "baseline"
    assert (report.summary["score_mean"] > 0.8).all()  # a linear target: R^2 near 1
    # KFold(3) on the rows, unshuffled: the first split tests the first 30 rows.
    direct = FineTunedRegressor(backbone, l2sp=0.01, weight_decay=0.0, random_state=0, **params)
    r2 = direct.fit(X[30:], y[30:]).score(X[:30], y[:30])
    assert report.results.query("method == 'l2sp' and split == 0")["score"].item() == r2


def test_user_estimators_mix_with_built_in_methods(images):
    X, y, _, target = images
    Xt, yt = X[target].reshape(len(target), -1), y[target]
    logistic = make_pipeline(StandardScaler(), LogisticRegression(max_iter=200))
    report = compare_transfer(
        Xt, yt, nn.Sequential(nn.Linear(64, 16), nn.ReLU()),
        methods={"scratch": None, "pixels + logistic": logistic}, cv=3, scoring="accuracy",
        estimator_params={"max_epochs": 2})
    assert report.summary.index.tolist() == ["scratch", "pixels + logistic"]
    assert report.summary.loc["pixels + logistic", "score_mean"] > 0.85
    assert not hasattr(logistic, "classes_")  # cloned, the user's estimator stays unfitted


def test_without_scratch_the_scores_compare_but_no_gain_is_claimed(flat_study):
    results = flat_study[0].results.query("method != 'scratch'")
    summary = TransferReport(results, task="classification").summary
    assert summary["verdict"].tolist() == ["no baseline", "no baseline"]
    assert summary[["gain_vs_scratch", "gain_ci_low", "gain_ci_high"]].isna().all().all()
    assert summary["score_mean"].notna().all()


TINY = dict(backbone=nn.Sequential(nn.Linear(4, 4)), estimator_params={"max_epochs": 1})
XY = (np.random.RandomState(0).rand(12, 4).astype(np.float32), np.arange(12) % 2)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"methods": ["scratch", "finetune"]}, ValueError,
     "unknown method 'finetune'; the built-in methods are 'scratch', 'linear_probe', "
     "'fine_tune', 'lp_ft', 'l2sp', 'contrastive'"),
    ({"methods": "scratch"}, ValueError, "write ['scratch'] for one method"),
    ({"methods": {"mine": "svc"}}, TypeError, "methods['mine'] must be an estimator"),
    ({"cv": [(np.arange(6), np.arange(6, 12))]}, ValueError,
     "needs at least 2 cross-validation splits to measure how much the gains vary; cv gave 1"),
    ({"scoring": ["accuracy", "f1"]}, ValueError, "takes one scoring metric"),
    ({"estimator_params": {"backbone": "torchvision:resnet18"}}, ValueError,
     "estimator_params must not set 'backbone'"),
    ({"estimator_params": {"max_epochs": 1, "bogus": 1}}, ValueError, "Invalid parameter 'bogus'"),
    ({"task": "ranking"}, ValueError, "task must be 'classification', 'regression' or None"),
])
def test_clear_errors(kwargs, error, message):
    with pytest.raises(error) as info:
        compare_transfer(*XY, **{**TINY, **kwargs})
    assert message in str(info.value)


def test_a_target_of_neither_kind_is_refused_with_the_way_out():
    X, y = XY
    two_outputs = np.column_stack([y, (np.arange(len(y)) % 3)])  # two multiclass outputs
    with pytest.raises(ValueError, match="y is 'multiclass-multioutput'. Pass task="):
        compare_transfer(X, two_outputs, **TINY)


def test_a_multilabel_target_is_refused_by_name_whatever_the_task():
    X, y = XY
    for task in (None, "classification", "regression"):
        with pytest.raises(ValueError, match="does not support multilabel targets"):
            compare_transfer(X, np.eye(2, dtype=int)[y], task=task, **TINY)


def test_a_method_setting_that_overrides_estimator_params_is_warned_about():
    with pytest.warns(UserWarning, match=r"the 'l2sp' method sets .* overriding "
                                         r"estimator_params \{'weight_decay': 0.1\}"):
        report = compare_transfer(*XY, **{**TINY, "estimator_params": {
            "max_epochs": 1, "weight_decay": 0.1}}, methods=["scratch", "l2sp"], cv=2)
    assert report.n_splits == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a value equal to the method's own is no override
        compare_transfer(*XY, **{**TINY, "estimator_params": {"max_epochs": 1, "l2sp": 0.01}},
                         methods=["scratch", "l2sp"], cv=2)



def test_the_contrastive_method_compares_classifiers_only():
    report = compare_transfer(*XY, **TINY, methods=["scratch", "contrastive"], cv=2,
                              random_state=0)
    assert set(report.results["method"]) == {"scratch", "contrastive"}
    with pytest.raises(ValueError, match="'contrastive' method draws pairs from class labels"):
        compare_transfer(XY[0], XY[0][:, 0], **TINY, methods=["scratch", "contrastive"], cv=2)


def test_adaptation_methods_are_judged_against_source_only(digits):
    """compare_transfer with source=...: source_only is the baseline, the plot draws gains."""
    from sktransfer.study import WithSource

    images, labels = digits
    X = (images[:300].reshape(300, -1) / 255.0).astype(np.float32)
    rng = np.random.RandomState(0)
    Xt = np.clip(0.6 * X[150:] + 0.3 + rng.normal(0, 0.1, X[150:].shape), 0, 1)
    Xt = Xt.astype(np.float32)
    net = nn.Sequential(nn.Linear(64, 16), nn.ReLU())
    splits = [(np.arange(i * 10, i * 10 + 10), np.arange(100, 150)) for i in range(3)]
    report = compare_transfer(Xt, labels[150:300], net, methods=["source_only", "coral"],
                              cv=splits, source=(X[:150], labels[:150]),
                              estimator_params={"max_epochs": 2, "lr": 0.05}, random_state=0)
    assert report.baseline == "source_only"
    assert report.summary.loc["source_only", "verdict"] == "baseline"
    assert "gain_vs_source_only" in report.summary.columns
    assert report.summary.loc["coral", "verdict"] in ("helps", "hurts", "no clear difference")
    fig = report.plot()
    assert "gain in accuracy over source_only" in fig.axes[0].get_xlabel()
    with pytest.raises(ValueError, match="needs source="):
        compare_transfer(Xt, labels[150:300], net, methods=["coral"], cv=splits)
    with_source = WithSource(FineTunedClassifier(net), X_source=X, y_source=labels[:300])
    assert isinstance(clone(with_source), WithSource)

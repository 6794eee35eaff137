"""rank_backbones on real digits: a network trained on a related source ranks
above the same network untrained and above a destroyed one; the table's
contents, names, cache and errors."""

import copy
import re

import numpy as np
import pytest
import torch
from torch import nn

from sktransfer import PretrainedFeatureTransformer
from sktransfer.selection import rank_backbones
from sktransfer.transferability import knn_score, logme


def cnn():
    """A small CNN over the 64 pixels of a digit, with a 64-d embedding."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(128, 64), nn.ReLU(),
    )


class Counting(nn.Module):
    """A linear embedding that counts the samples its forward sees (all copies)."""

    seen = 0

    def __init__(self, width=5):
        super().__init__()
        self.linear = nn.Linear(64, width)

    def forward(self, x):
        type(self).seen += len(x)
        return self.linear(x)


@pytest.fixture(scope="module")
def digits_split():
    """Pixels in [0, 1]; one half of the digits for the source, the other for targets."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    order = np.random.RandomState(0).permutation(len(y))
    return (X / 16).astype(np.float32), y, order[:900], order[900:]


@pytest.fixture(scope="module")
def source_cnn(digits_split):
    """The CNN trained 3 epochs on the source: the digit modulo 5 (0 and 5 share
    a label), a related task with other labels. A plain loop, seeded."""
    X, y, source, _ = digits_split
    torch.manual_seed(1)
    body = cnn()
    model = nn.Sequential(body, nn.Linear(64, 5))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    Xs, ys = torch.tensor(X[source]), torch.tensor(y[source] % 5)
    order = torch.Generator().manual_seed(0)
    for _ in range(3):
        for batch in torch.randperm(len(Xs), generator=order).split(32):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(Xs[batch]), ys[batch]).backward()
            optimizer.step()
    return body


@pytest.fixture(scope="module")
def few_labels(digits_split):
    """Target task: digits 5 to 9 of the other half, 20 labelled images each."""
    X, y, _, target = digits_split
    rng = np.random.RandomState(0)
    chosen = np.concatenate([rng.choice(target[y[target] == c], 20, replace=False)
                             for c in range(5, 10)])
    return X[chosen], y[chosen]


def test_a_related_source_ranks_above_random_and_destroyed_weights(source_cnn, few_labels):
    X, y = few_labels
    torch.manual_seed(1)  # the same initial weights the source training started from
    untrained = cnn()
    destroyed = copy.deepcopy(source_cnn)
    with torch.no_grad():
        for p in destroyed.parameters():
            p.zero_()
    table = rank_backbones([untrained, destroyed, source_cnn], X, y,
                           names=["random", "zero", "source"], rank_by="knn")
    assert list(table.index) == ["source", "random", "zero"]
    for metric in ("knn", "linear_probe", "logme"):
        scores = table[metric]
        assert scores["source"] > scores["random"] > scores["zero"], metric
    assert table.loc["zero", "knn"] == pytest.approx(0.2)  # chance: 5 balanced classes
    assert (table["n_features"] == 64).all()
    # The table's numbers are the scores of each network's own embedding.
    with torch.no_grad():
        features = source_cnn(torch.tensor(X)).numpy()
    assert table.loc["source", "logme"] == pytest.approx(logme(features, y), rel=1e-5)


def test_a_second_ranking_with_the_cache_embeds_nothing(tmp_path, few_labels):
    X, y = few_labels
    candidates = [Counting(), Counting(3)]
    Counting.seen = 0
    first = rank_backbones(candidates, X, y, cache=tmp_path, metrics=("logme",))
    assert Counting.seen >= 2 * len(X)
    Counting.seen = 0
    second = rank_backbones(candidates, X, y, cache=tmp_path, metrics=("logme",))
    # Nothing is embedded again, not even the probe that tells a module's width.
    assert Counting.seen == 0
    assert second["logme"].tolist() == first["logme"].tolist()


def test_default_names_are_readable_and_unique(few_labels):
    X, y = few_labels
    candidates = [nn.Linear(64, 4), nn.Linear(64, 4), cnn,
                  PretrainedFeatureTransformer(cnn, weights=None, random_state=0)]
    table = rank_backbones(candidates, X[:40], y[:40], metrics=("logme",))
    assert sorted(table.index) == sorted(["Linear", "Linear (2)", "cnn",
                                          "cnn (weights=None)"])
    assert list(table.columns) == ["logme", "embed_seconds", "n_features"]
    assert table["logme"].is_monotonic_decreasing


def test_a_fitted_transformer_is_used_as_it_is_and_left_unchanged(tmp_path, few_labels):
    X, y = few_labels
    # Random weights drawn at fit: a refit would draw others.
    fitted = PretrainedFeatureTransformer(cnn, weights=None).fit(X)
    table = rank_backbones([fitted], X, y, cache=tmp_path, metrics=("logme",))
    assert table["logme"].iloc[0] == pytest.approx(logme(fitted.transform(X), y), rel=1e-6)
    assert fitted.cache is None


def test_a_continuous_target_is_scored_as_regression(few_labels):
    X, _ = few_labels
    target = X[:, 20:30].sum(axis=1) + 0.1 * X[:, 40]
    table = rank_backbones([nn.Identity()], X, target, metrics=("knn", "logme"),
                           rank_by="knn")
    assert table["knn"].iloc[0] == pytest.approx(knn_score(X, target, regression=True))
    assert table["logme"].iloc[0] == pytest.approx(logme(X, target, regression=True))


def test_verbose_prints_one_line_per_candidate(capsys, few_labels):
    X, y = few_labels
    rank_backbones([nn.Identity(), nn.Linear(64, 3)], X, y, metrics=("logme",), verbose=1)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[rank_backbones] 1/2 Identity: 64 features in ")
    assert "logme=" in lines[1]


@pytest.mark.parametrize("kwargs, message", [
    (dict(metrics=("logme", "fid")), "unknown metric(s) ['fid']; choose among "
                                     "['knn', 'linear_probe', 'logme']"),
    (dict(metrics=("knn",)), "rank_by='logme' is not among the metrics computed ['knn']"),
    (dict(names=["a"]), "names has 1 entries for 2 candidates"),
    (dict(names=["a", "a"]), "names must be unique"),
])
def test_bad_requests_fail_before_embedding_anything(kwargs, message, few_labels):
    X, y = few_labels
    Counting.seen = 0
    with pytest.raises(ValueError, match=re.escape(message)):
        rank_backbones([Counting(), Counting()], X, y, **kwargs)
    assert Counting.seen == 0


def test_y_of_another_length_fails_before_embedding(few_labels):
    X, y = few_labels
    Counting.seen = 0
    with pytest.raises(ValueError, match="X has 100 samples but y has 99"):
        rank_backbones([Counting()], X, y[:99])
    with pytest.raises(ValueError, match="candidates is empty"):
        rank_backbones([], X, y)
    assert Counting.seen == 0

"""Ranking backbones: how fast, and does the ranking agree with fine-tuning?

Two measurements:

1. ``logme`` on 20,000 x 512 float32 features with 10 classes: its time,
   side by side with one float64 ``F^T F`` (the product it is built on), so
   the ratio says how much the rest (eigendecomposition, fixed point) adds.
2. ``rank_backbones`` over six small networks on digits 5-9 with 20 labelled
   images per class, against fine-tuning each of them
   (``FineTunedClassifier``, 15 epochs) on the same labelled images and
   measuring accuracy on the other images of 5-9. The candidates: a CNN
   trained on digits 0-4 for 3 epochs and for 1 epoch, the same CNN trained on
   the digit modulo 5 (all ten digits seen, other labels), the CNN with
   random weights, the CNN with every weight zero, and a random 2-layer MLP.
   Kendall's tau between each metric's scores and the fine-tuned accuracies
   says how well the metric predicts the outcome of fine-tuning.

Run: ``python benchmarks/bench_ranking.py`` (or ``run.py --only ranking``
once ``ranking`` is in ``run.py``'s ``BENCHMARKS``).
"""

import copy
import statistics
import time

import numpy as np
import torch
from scipy.stats import kendalltau
from sklearn.datasets import load_digits
from torch import nn

from harness import Settings, Table
from sktransfer import FineTunedClassifier
from sktransfer.selection import rank_backbones
from sktransfer.transferability import logme

NAME = "ranking"
METRICS = ("logme", "knn", "linear_probe")


def cnn():
    """The CNN every candidate but the MLP shares: 64 pixels in, 64-d embedding out."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(128, 64), nn.ReLU(),
    )


def logme_table(quick):
    n, d, classes = (4000, 256, 10) if quick else (20000, 512, 10)
    rng = np.random.RandomState(0)
    y = rng.randint(0, classes, n)
    # Features that carry the class in a few directions, plus noise.
    F = (np.eye(classes)[y] @ rng.randn(classes, d) + 3 * rng.randn(n, d)).astype(np.float32)
    times, gram_times = [], []
    for _ in range(2 if quick else 3):
        start = time.perf_counter()
        score = logme(F, y)
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
        F64 = F.astype(np.float64)
        F64.T @ F64
        gram_times.append(time.perf_counter() - start)
    ratios = [t / g for t, g in zip(times, gram_times)]
    return Table(
        f"logme on {n:,} x {d} float32 features, {classes} classes",
        ["logme seconds (median)", "range", "one float64 F^T F (median)",
         "logme / F^T F (median)", "LogME"],
        [[statistics.median(times), f"{min(times):.2f}-{max(times):.2f}",
          statistics.median(gram_times), statistics.median(ratios), score]],
        notes=["LogME's cost is one Gram matrix, one eigendecomposition of it and a few "
               "dozen O(D) fixed-point iterations per class."])


def digits_tasks():
    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    order = np.random.RandomState(0).permutation(len(y))
    half, other = order[:900], order[900:]
    rng = np.random.RandomState(0)
    target = other[y[other] >= 5]
    labelled = np.concatenate([rng.choice(target[y[target] == c], 20, replace=False)
                               for c in range(5, 10)])
    test = np.setdiff1d(target, labelled)
    return X, y, half, labelled, test


def pretrain(X, y, epochs, seed=1):
    """The CNN trained on (X, y) with a plain seeded loop; its body is returned."""
    torch.manual_seed(seed)
    body = cnn()
    model = nn.Sequential(body, nn.Linear(64, int(y.max()) + 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    Xs, ys = torch.tensor(X), torch.tensor(y)
    order = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for batch in torch.randperm(len(Xs), generator=order).split(32):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(Xs[batch]), ys[batch]).backward()
            optimizer.step()
    return body


def candidates(X, y, half):
    lower = half[y[half] < 5]
    torch.manual_seed(1)
    random_cnn = cnn()
    zero = copy.deepcopy(random_cnn)
    with torch.no_grad():
        for p in zero.parameters():
            p.zero_()
    torch.manual_seed(2)
    mlp = nn.Sequential(nn.Linear(64, 64), nn.ReLU())
    return {
        "cnn, digits 0-4, 3 epochs": pretrain(X[lower], y[lower], 3),
        "cnn, digits 0-4, 1 epoch": pretrain(X[lower], y[lower], 1),
        "cnn, digit mod 5, 3 epochs": pretrain(X[half], y[half] % 5, 3),
        "cnn, random": random_cnn,
        "cnn, all weights 0": zero,
        "mlp, random": mlp,
    }


def ranking_tables(quick):
    X, y, half, labelled, test = digits_tasks()
    nets = candidates(X, y, half)
    start = time.perf_counter()
    table = rank_backbones(list(nets.values()), X[labelled], y[labelled],
                           names=list(nets), metrics=METRICS)
    rank_seconds = time.perf_counter() - start

    accuracy, tune_seconds = {}, 0.0
    for name, net in nets.items():
        start = time.perf_counter()
        clf = FineTunedClassifier(net, lr=3e-3, max_epochs=5 if quick else 15, batch_size=16,
                                  validation_fraction=0, random_state=0)
        clf.fit(X[labelled], y[labelled])
        tune_seconds += time.perf_counter() - start
        accuracy[name] = float(np.mean(clf.predict(X[test]) == y[test]))
    table["fine-tuned accuracy"] = [accuracy[n] for n in table.index]

    rows = [[name, *(float(table.loc[name, m]) for m in METRICS),
             float(table.loc[name, "fine-tuned accuracy"])] for name in table.index]
    scores = Table(
        f"rank_backbones on digits 5-9, 20 labels per class, against fine-tuning "
        f"({len(test)} test images)",
        ["candidate", *METRICS, "fine-tuned accuracy"], rows)
    agreement = Table(
        "Agreement of each metric with the fine-tuned accuracies",
        ["metric", "Kendall tau", "p-value"],
        [[m, *_tau(table[m], table["fine-tuned accuracy"])] for m in METRICS])
    cost = Table(
        "Cost: ranking against fine-tuning every candidate",
        ["rank_backbones seconds", "fine-tuning seconds (all)", "ratio"],
        [[rank_seconds, tune_seconds, rank_seconds / tune_seconds]])
    return [scores, agreement, cost]


def _tau(metric, accuracy):
    tau, p = kendalltau(metric, accuracy)
    return [float(tau), float(p)]


def run(settings):
    return [logme_table(settings.quick), *ranking_tables(settings.quick)]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for result in run(Settings(quick=args.quick)):
        print(result.to_markdown(), end="\n\n")

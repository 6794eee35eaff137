"""Does transfer help here? The transfer study on handwritten digits.

Before tuning anything, the question to settle is whether a pretrained
backbone beats the same network trained from scratch on *your* target, with
the few labels you have. ``sktransfer.compare_transfer`` answers it: every
way of using the backbone (a linear probe, fine-tuning, LP-FT, L2-SP, and
here also its frozen features with an SVC) is trained on the same few-label
splits as the network from scratch, and each gets its gain over scratch with
a 95% paired confidence interval and a verdict: helps, hurts, or no clear
difference.

A small CNN is the backbone, in two scenarios:

1. **new classes**: the source task is the digits 0-4, the target the
   digits 5-9. The source network has never seen the target's shapes;
2. **new scanner**: the source task is the ten digits on clean images (one
   half of the data set), the target the same ten digits on the other half,
   blurred and noisy, as from a scanner unlike the lab's. This scenario
   also has all the new scanner's images *without labels*: domain
   adaptation (CORAL, DANN) trains on the clean labelled images, the few
   labelled scans and all the unlabelled ones, and is judged against the
   same training without adaptation ("source_only") on the same draws.

The digits ship with scikit-learn, so nothing is downloaded. Each scenario's
summary is printed, and all are written as CSV files next to a plot.

Run: ``python examples/demo.py`` (or ``make demo``); ``--quick`` runs a
smaller version, ``--help`` lists the options.
"""

import argparse
import os
import sys
import time
from collections import OrderedDict

import numpy as np
import pandas as pd
import torch
from scipy.ndimage import gaussian_filter
from sklearn.datasets import load_digits
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from torch import nn

from sktransfer import FineTunedClassifier, PretrainedFeatureTransformer, rank_backbones
from sktransfer.study import METHODS, compare_transfer
from sktransfer.study import WithSource

LR = 1e-2
#: The target scanner: Gaussian blur (pixels) and additive noise (on [0, 1]).
BLUR, NOISE = 0.6, 0.1
#: The adaptation weights of the new-scanner study: the choice of both
#: unsupervised scorers (deep embedded validation, prediction entropy) on
#: most seeds of benchmarks/bench_adaptation.py's new-scanner shift.
ADAPTATION_WEIGHTS = {"coral": 30.0, "dann": 0.03}


def digits_cnn():
    """The backbone: two convolution blocks; the flattened maps are the embedding."""
    return nn.Sequential(OrderedDict(
        conv1=nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU()),
        conv2=nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        flatten=nn.Flatten(),
    ))


def load_images(every=1):
    """Digits as ``(N, 1, 8, 8)`` float32 images in [0, 1], and their labels
    (every ``every``-th image only, for a quicker run)."""
    digits = load_digits()
    return (digits.images[::every, None] / 16.0).astype(np.float32), digits.target[::every]


def new_classes(X, y):
    """Scenario 1: source digits 0-4, target digits 5-9 (clean images)."""
    source = y < 5
    return X[source], y[source], X[~source], y[~source]


def new_scanner(X, y):
    """Scenario 2: source = clean half of the images, target = the other half, degraded."""
    source, target = train_test_split(np.arange(len(y)), test_size=0.5, stratify=y,
                                      random_state=0)
    return X[source], y[source], degrade(X[target]), y[target]


def degrade(X, blur=BLUR, noise=NOISE, seed=0):
    """Blur each image, add Gaussian noise and clip to [0, 1]."""
    blurred = np.stack([gaussian_filter(x, sigma=(0, blur, blur)) for x in X])
    noisy = blurred + np.random.RandomState(seed).normal(0, noise, X.shape)
    return np.clip(noisy, 0, 1).astype(np.float32)


SCENARIOS = {"new classes (digits 0-4 -> 5-9)": new_classes,
             "new scanner (clean -> blurred + noisy)": new_scanner}


def few_label_splits(y, per_class, n_splits, seed=0):
    """``n_splits`` (train, test) pairs: ``per_class`` labelled images per class, tested
    on all the others. Each pair draws its own labelled images."""
    rng = np.random.RandomState(seed)
    splits = []
    for _ in range(n_splits):
        train = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                                for c in np.unique(y)])
        splits.append((train, np.setdiff1d(np.arange(len(y)), train)))
    return splits


def methods(source):
    """The five built-in methods, and feature transfer into an SVC as a sixth."""
    # FrozenEstimator: cross-validation clones the pipeline, and the clone
    # must keep the trained source rather than an unfitted copy of it.
    svc = make_pipeline(PretrainedFeatureTransformer(FrozenEstimator(source)), StandardScaler(),
                        SVC())
    return {**dict.fromkeys(METHODS), "source features + SVC": svc}


def study(name, make_tasks, labels_per_class, n_splits, epochs, source_epochs, log=print,
          every=1):
    """Train the scenario's source network, then compare the methods at each size.

    Returns
    -------
    reports : dict
        ``labels_per_class -> TransferReport``.
    """
    X_source, y_source, X_target, y_target = make_tasks(*load_images(every))
    log(f"\n=== {name} ===\nsource: {len(y_source)} labelled images of digits "
        f"{sorted(set(y_source.tolist()))}; target: {len(y_target)} images of digits "
        f"{sorted(set(y_target.tolist()))}")
    tic = time.perf_counter()
    source = FineTunedClassifier(digits_cnn, lr=3e-3, max_epochs=source_epochs, batch_size=64,
                                 random_state=0).fit(X_source, y_source)
    log(f"trained the source network in {time.perf_counter() - tic:.0f} s")
    log(rank(source, X_target, y_target))
    reports = {}
    for k in labels_per_class:
        log(f"-- {k} labelled target images per class, {n_splits} draws "
            "(each tested on all the other target images):")
        reports[k] = compare_transfer(
            X_target, y_target, source, methods=methods(source),
            cv=few_label_splits(y_target, k, n_splits),
            estimator_params={"max_epochs": epochs, "lr": LR}, random_state=0, verbose=1)
        if make_tasks is new_scanner:
            log("-- the same draws, with every scan also given unlabelled (domain adaptation):")
            reports[f"{k} + unlabelled scans"] = compare_transfer(
                X_target, y_target, source, methods=adaptation_methods(
                    source, X_source, y_source, X_target, epochs),
                cv=few_label_splits(y_target, k, n_splits), source=(X_source, y_source),
                estimator_params={"max_epochs": epochs, "lr": LR}, random_state=0, verbose=1)
    return reports


def adaptation_methods(source, X_source, y_source, X_unlabelled, epochs):
    """source_only (the baseline), then CORAL and DANN at their chosen weights."""
    methods = {"source_only": None}
    for method, weight in ADAPTATION_WEIGHTS.items():
        clf = FineTunedClassifier(source, adaptation=method, adaptation_weight=weight,
                                  max_epochs=epochs, lr=LR, random_state=0)
        methods[f"{method} (lambda={weight:g})"] = WithSource(
            clf, X_source=X_source, y_source=y_source, X_unlabelled=X_unlabelled)
    return methods


def rank(source, X, y, per_class=10):
    """Rank the source network against random weights on a few labelled target images.

    Before any study: which starting point do the frozen features favour?
    (k-NN accuracy is cheap and often the most reliable; LogME is less
    reliable on so few samples.)
    """
    labelled = few_label_splits(y, per_class, 1, seed=1)[0][0]
    ranking = rank_backbones(
        [source, PretrainedFeatureTransformer(digits_cnn, weights=None, random_state=0)],
        X[labelled], y[labelled], names=["source network", "random weights"],
        rank_by="knn", cv=5)
    return (f"ranked on {len(labelled)} labelled target images (frozen features):\n"
            + ranking[["logme", "knn", "linear_probe"]].round(3).to_string())


def format_summary(report):
    """One line per method: accuracy, gain over the baseline with its interval, verdict."""
    lines = [f"{'':<24}{'accuracy':>16}{'gain (points)':>16}{'95% interval':>18}  verdict"]
    for method, row in report.summary.iterrows():
        score = f"{row.score_mean:.3f} ±{row.score_std:.3f}"
        gain_mean = row[f"gain_vs_{report.baseline}"]
        if np.isnan(gain_mean):
            gain, interval = "", ""
        else:
            gain = f"{100 * gain_mean:+.1f}"
            interval = f"[{100 * row.gain_ci_low:+.1f}, {100 * row.gain_ci_high:+.1f}]"
        lines.append(f"{method:<24}{score:>16}{gain:>16}{interval:>18}  {row.verdict}")
    return "\n".join(lines)


def tables(all_reports, column):
    """The reports' ``results`` or ``summary`` stacked, keyed by scenario and size."""
    frames = []
    for scenario, reports in all_reports.items():
        for k, report in reports.items():
            frame = getattr(report, column).reset_index(drop=column == "results")
            frames.append(frame.assign(scenario=scenario, labels_per_class=k))
    return pd.concat(frames, ignore_index=True)


def size_name(k):
    """How a study's size reads: ``2`` -> "2 labels per class"; the adaptation
    study's key ``"2 + unlabelled scans"`` -> "2 labels per class + unlabelled scans"."""
    count, _, extra = str(k).partition(" + ")
    return f"{count} labels per class" + (f" + {extra}" if extra else "")


def plot(all_reports, path):
    """One panel per scenario and size, as ``TransferReport.plot`` draws them."""
    from matplotlib.figure import Figure

    panels = [(s, k, r) for s, reports in all_reports.items() for k, r in reports.items()]
    fig = Figure(figsize=(8, 3.6 * len(panels)), layout="constrained")
    for ax, (scenario, k, report) in zip(fig.subplots(len(panels), 1, squeeze=False)[:, 0],
                                         panels):
        report.plot(ax=ax)
        ax.set_title(f"{scenario}\n{size_name(k)}", fontsize=10)
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_output", help="output directory")
    parser.add_argument("--labels", type=int, nargs="+", default=[2, 10],
                        help="labelled target images per class")
    parser.add_argument("--splits", type=int, default=5,
                        help="random draws of the labelled images (at least 2)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of target training")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (the network is tiny: one is fastest)")
    parser.add_argument("--quick", action="store_true",
                        help="one size, two draws, few epochs, a third of the images: "
                             "checks that it all runs")
    args = parser.parse_args(argv)
    source_epochs, every = 10, 1
    if args.quick or os.environ.get("SKTRANSFER_EXAMPLE_QUICK") == "1":
        args.labels, args.splits, args.epochs, source_epochs, every = [2], 2, 3, 2, 3
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    all_reports = {name: study(name, make_tasks, args.labels, args.splits, args.epochs,
                               source_epochs, every=every)
                   for name, make_tasks in SCENARIOS.items()}

    for scenario, reports in all_reports.items():
        for k, report in reports.items():
            baseline = ("training from scratch" if report.baseline == "scratch"
                        else report.baseline)
            print(f"\n{scenario}, {size_name(k)}, {report.n_splits} draws.\n"
                  f"Gain over {baseline}, in accuracy points (paired by draw), "
                  "its 95% interval and the verdict:")
            print(format_summary(report))
    print("\nA verdict of 'hurts' is negative transfer: the source network is a worse "
          "start than random\nweights here (in the unlabelled-scans tables: the adaptation "
          "term made the model worse\nthan the same training without it). 'no clear "
          "difference': more draws or labels would be\nneeded to tell.")

    os.makedirs(args.out, exist_ok=True)
    tables(all_reports, "results").to_csv(os.path.join(args.out, "results.csv"), index=False)
    tables(all_reports, "summary").to_csv(os.path.join(args.out, "summary.csv"), index=False)
    plot(all_reports, os.path.join(args.out, "accuracy.png"))
    print(f"\nWrote {args.out}/results.csv, {args.out}/summary.csv and "
          f"{args.out}/accuracy.png in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    sys.exit(main())

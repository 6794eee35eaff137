"""Fit a head to convergence on fixed embeddings: the linear probe's solution.

A few epochs of stochastic gradient steps leave a fresh head far from the
optimum when there are few samples; a full-batch quasi-Newton fit on the
embeddings (computed once, the backbone frozen) reaches it, as
``LogisticRegression`` does. Two places need it: head-first fine-tuning
(LP-FT, Kumar et al. 2022: fine-tuning starts from the probe's optimum, so
the random head's large early gradients do not distort the pretrained
features) and the contrastive objective, whose head is fitted on the tuned
embeddings after the backbone trains.
"""

import copy

import numpy as np
import torch

from .weights import WeightedLoss


def fit_head(head, embeddings, target, criterion=None, l2=None, max_iter=500,
             sample_weight=None):
    """Train ``head`` in place on ``embeddings`` by full-batch L-BFGS.

    The objective is the mean of ``criterion`` plus ``l2 / 2`` times the
    squared norm of the head's weight matrices (biases are not penalized):
    with cross-entropy, scikit-learn's ``LogisticRegression(C=1)`` objective
    divided by the number of samples; with the squared error, ``Ridge``'s
    (up to its factor 2). For a linear head this convex problem is solved
    to its optimum; for an MLP head, L-BFGS reaches a local optimum from the
    head's initialization. Dropout is off during the fit (a full-batch
    objective must be deterministic; the penalty regularizes instead). The
    fit runs in float64 on the CPU, so it is reproducible, and the head's
    parameters are then set to the result.

    Parameters
    ----------
    head : torch.nn.Module
        Maps ``(n, D)`` embeddings to ``(n, n_outputs)``.
    embeddings : ndarray of shape (n_samples, D)
    target : ndarray of shape (n_samples,) or (n_samples, n_outputs)
        Class indices (integers) or regression targets (floats).
    criterion : torch.nn.Module, optional
        The loss, default ``torch.nn.CrossEntropyLoss()`` (class weights, if
        it has any, are kept).
    l2 : float, optional
        Penalty strength; default ``1 / n_samples`` (the samples of nonzero
        weight, with ``sample_weight``), which is ``LogisticRegression``'s
        default ``C=1``.
    max_iter : int, default=500
        L-BFGS iterations at most (a linear probe converges in tens).
    sample_weight : ndarray of shape (n_samples,), optional
        Weights of the samples in the loss: its mean becomes the weighted
        mean of :class:`~sktransfer.training.weights.WeightedLoss`.

    Returns
    -------
    head

    Examples
    --------
    >>> from torch import nn
    >>> Z = np.array([[0.0, 1.0], [0.2, 0.9], [1.0, 0.0], [0.9, 0.1]], dtype=np.float32)
    >>> head = fit_head(nn.Linear(2, 2), Z, np.array([0, 0, 1, 1]))
    >>> head(torch.from_numpy(Z)).argmax(1).tolist()
    [0, 0, 1, 1]
    """
    n = len(target)
    if l2 is None:
        # LogisticRegression(C=1) over the samples that count: rows of weight
        # 0 are as if removed (and the weights' scale does not matter).
        l2 = 1.0 / (n if sample_weight is None else max(1, np.count_nonzero(sample_weight)))
    criterion = torch.nn.CrossEntropyLoss() if criterion is None else criterion
    # Class weights in float64 too.
    criterion = WeightedLoss(copy.deepcopy(criterion).double())
    work = copy.deepcopy(head).double().cpu().eval()
    params = list(work.parameters())
    x = torch.as_tensor(np.asarray(embeddings), dtype=torch.float64).reshape(n, -1)
    target = np.asarray(target)
    t = torch.as_tensor(target, dtype=torch.int64 if target.dtype.kind in "iub"
                        else torch.float64)
    weighted = None if sample_weight is None else torch.as_tensor(
        np.asarray(sample_weight), dtype=torch.float64)
    optimizer = torch.optim.LBFGS(params, lr=1, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-9, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        out = work(x)
        out = out.reshape(t.shape) if t.is_floating_point() else out
        loss = criterion(out, t if weighted is None else {"target": t, "weight": weighted})
        loss = loss + 0.5 * l2 * sum(p.pow(2).sum() for p in params if p.ndim >= 2)
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        for p, fitted in zip(head.parameters(), work.parameters()):
            p.copy_(fitted.to(p.dtype))
    return head

"""Unsupervised domain adaptation: the target domain's unlabelled samples enter the loss.

The fine-tuning objective becomes ``L = sum l(f(x_s), y_s) + lambda * D(e_s, e_t)``,
where ``e_s`` and ``e_t`` are the backbone's embeddings of a batch of source
samples and a batch of target samples, and ``D`` is one of:

- ``"coral"`` (Deep CORAL, Sun & Saenko 2016): the squared Frobenius distance
  between the two batches' embedding covariances, divided by ``4 d^2``;
- ``"mmd"`` (DAN, Long et al. 2015): the squared maximum mean discrepancy
  under a sum of five Gaussian kernels whose bandwidths are the batch's mean
  squared distance times ``2^-2 .. 2^2``;
- ``"dann"`` (Ganin et al. 2016): the cross-entropy of a domain classifier
  (an MLP on the embedding, two hidden layers of ``min(1024, max(256, 4 d))``
  units) that sees the embeddings through a
  gradient reversal layer, so the classifier learns to tell the domains
  apart while the backbone learns to make them indistinguishable. Its weight
  warms up as ``lambda * (2 / (1 + exp(-10 p)) - 1)`` with ``p`` the fraction
  of the call's training steps done.

The data convention is skada's: ``sample_domain`` positive for source
samples and negative for target ones; a target sample without a label has
``y = -1`` (classification) or NaN (regression). Each training batch pairs
``batch_size`` labelled samples with as many target samples (a 1:1 ratio),
drawn in a seeded shuffled order that cycles through the target samples.
"""

import math

import numpy as np
import torch
from skorch.dataset import unpack_data
from torch import nn

from .freezing import auto_frozen, n_frozen_groups

#: The values of the fine-tuners' ``adaptation`` parameter (besides None).
ADAPTATIONS = ("coral", "mmd", "dann")

#: The weight each method trains with at ``adaptation_weight=None`` (the
#: default). Chosen on the benchmark's shifts (benchmarks/bench_adaptation.py,
#: ``BENCH_ADAPTATION_MODE=defaults``) as the largest weight that did not lose
#: to source-only training on any shift of the choice seeds; docs/adaptation.rst
#: reports how much of the best weight's gain each keeps on other seeds.
DEFAULT_WEIGHTS = {"coral": 300.0, "mmd": 0.1, "dann": 0.3}

#: Bandwidth multipliers of the multi-kernel MMD (DAN's family of Gaussians).
MMD_BANDWIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)


# -- the distances -----------------------------------------------------------

def coral_loss(source, target):
    """Deep CORAL: ``||C_s - C_t||_F^2 / (4 d^2)`` between the embeddings' covariances.

    Parameters
    ----------
    source, target : torch.Tensor of shape (n_s, d) and (n_t, d)

    Returns
    -------
    torch.Tensor
        A scalar; 0 when the two covariances agree.

    Examples
    --------
    >>> x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    >>> float(coral_loss(x, x))
    0.0
    >>> bool(coral_loss(x, 3 * x) > 0)
    True
    """
    d = source.shape[1]
    return (_covariance(source) - _covariance(target)).pow(2).sum() / (4 * d * d)


def _covariance(x):
    centered = x - x.mean(0, keepdim=True)
    return centered.T @ centered / max(len(x) - 1, 1)


def mmd_loss(source, target, bandwidths=MMD_BANDWIDTHS):
    """Multi-kernel squared MMD (biased estimate) with Gaussian kernels.

    The base bandwidth is the mean squared distance between all pairs of
    the two batches (detached), scaled by each of ``bandwidths``.

    Parameters
    ----------
    source, target : torch.Tensor of shape (n_s, d) and (n_t, d)
    bandwidths : sequence of float

    Returns
    -------
    torch.Tensor
        A scalar, 0 for identical batches.

    Examples
    --------
    >>> x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    >>> abs(float(mmd_loss(x, x))) < 1e-6
    True
    >>> bool(mmd_loss(x, x + 2) > 0.1)
    True
    """
    both = torch.cat([source, target])
    sq = torch.cdist(both, both).pow(2)
    base = sq.detach().sum() / max(len(both) ** 2 - len(both), 1)
    kernel = sum(torch.exp(-sq / (base * b + 1e-12)) for b in bandwidths)
    n = len(source)
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


def reverse_gradient(x, scale=1.0):
    """Identity forward, gradient multiplied by ``-scale`` backward (DANN's GRL).

    Examples
    --------
    >>> x = torch.ones(2, requires_grad=True)
    >>> reverse_gradient(x, 0.5).sum().backward()
    >>> x.grad
    tensor([-0.5000, -0.5000])
    """
    return _ReverseGradient.apply(x, scale)


def resolve_weight(method, weight):
    """``weight`` as a float, or the method's default (:data:`DEFAULT_WEIGHTS`) when None.

    Examples
    --------
    >>> resolve_weight("coral", None) == DEFAULT_WEIGHTS["coral"]
    True
    >>> resolve_weight("mmd", 0.5)
    0.5
    """
    if weight is None:
        return DEFAULT_WEIGHTS[method]
    return float(weight)


def dann_warmup(progress):
    """DANN's weight schedule ``2 / (1 + exp(-10 p)) - 1``: 0 at the start, near 1 at the end."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


class DomainAdaptation(nn.Module):
    """The adaptation term of one training: the method, its weight and its own layers.

    Parameters
    ----------
    method : {"coral", "mmd", "dann"}
    weight : float or None
        lambda; None for the method's default (:data:`DEFAULT_WEIGHTS`).
    width : int
        The embedding width (the domain classifier's input for ``"dann"``).
    """

    def __init__(self, method, weight, width):
        super().__init__()
        if method not in ADAPTATIONS:
            raise ValueError(f"unknown adaptation {method!r}; use one of {ADAPTATIONS}")
        self.method = method
        self.weight = resolve_weight(method, weight)
        self.discriminator = None
        if method == "dann":
            # Two hidden layers of at least 256 units (Ganin et al. use 1024 x 1024):
            # a domain classifier as narrow as a small embedding (16 units for a
            # 16-wide one) is fooled by collapsing the embedding, which the
            # reversed gradient then rewards (measured: it wrecked an MLP's
            # accuracy at lambda 0.3 on one seed in three; the wider one did not).
            hidden = min(1024, max(256, 4 * width))
            self.discriminator = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(),
                                               nn.Linear(hidden, hidden), nn.ReLU(),
                                               nn.Linear(hidden, 1))
        self.stream = None
        self.progress = 0.0

    def forward(self, source, target):
        """``weight * D(source, target)`` (with DANN's warm-up applied to its weight)."""
        source, target = source.float().flatten(1), target.float().flatten(1)
        if self.method == "coral":
            return self.weight * coral_loss(source, target)
        if self.method == "mmd":
            return self.weight * mmd_loss(source, target)
        scale = dann_warmup(self.progress)
        logits = self.discriminator(reverse_gradient(torch.cat([source, target]), scale))
        domain = torch.cat([torch.ones(len(source)), torch.zeros(len(target))]).to(logits)
        return self.weight * nn.functional.binary_cross_entropy_with_logits(
            logits.squeeze(1), domain)


class TargetStream:
    """Batches of target samples for the training steps, in a seeded shuffled cycle.

    Parameters
    ----------
    rows : Dataset
        The target samples (``__getitems__`` gives ``(raw batch, y)``).
    collate : callable
        The backbone's preprocessing (the training loader's ``collate_fn``).
    batch_size : int
    seed : int
    total_steps : int
        The training steps of this call, for DANN's warm-up.
    rank, world_size : int
        In a data-parallel fit, each rank draws from its own share.
    """

    def __init__(self, rows, collate, batch_size, seed, total_steps, rank=0, world_size=1):
        self.rows = rows
        self.collate = collate
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(int(seed))
        self.total_steps = max(int(total_steps), 1)
        self.rank, self.world_size = rank, world_size
        self.steps = 0
        self.order = np.empty(0, dtype=np.int64)

    def next(self, n):
        """The next ``n`` target samples, preprocessed."""
        while len(self.order) < n:
            perm = torch.randperm(len(self.rows), generator=self.generator).numpy()
            mine = perm[self.rank::self.world_size] if len(perm) >= self.world_size else perm
            self.order = np.concatenate([self.order, mine])
        take, self.order = self.order[:n], self.order[n:]
        self.steps += 1
        inputs, _ = self.collate(self.rows.__getitems__(take))
        return inputs

    @property
    def progress(self):
        return min(1.0, self.steps / self.total_steps)


def _concat(a, b):
    """``a`` and ``b`` as one batch, or None when they cannot be stacked (ragged dicts)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.cat([a, b]) if a.shape[1:] == b.shape[1:] else None
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        if all(a[k].shape[1:] == b[k].shape[1:] for k in a):
            return {k: torch.cat([a[k], b[k]]) for k in a}
    return None


def _length(x):
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def adapted_train_step(net, batch):
    """One training step of a :class:`~sktransfer.training.net.FineTuningNet` with adaptation.

    The source batch and a target batch of the same size go through the
    network together (one forward pass, so BatchNorm sees both domains);
    the supervised loss is on the source rows, the adaptation term on the
    embeddings (the head's input) of both.
    """
    net._set_training(True)
    adaptation = net.adaptation_
    Xs, ys = unpack_data(batch)
    n_source = _length(Xs)
    Xt = adaptation.stream.next(n_source)
    adaptation.progress = adaptation.stream.progress
    embeddings = []
    hook = net.module_.head.register_forward_pre_hook(
        lambda _module, args: embeddings.append(args[0]))
    try:
        joint = _concat(Xs, Xt)
        if joint is not None:
            outputs = net.infer(joint)
            y_pred = outputs[:n_source]
            source, target = embeddings[0][:n_source], embeddings[0][n_source:]
        else:
            y_pred = net.infer(Xs)
            net.infer(Xt)
            source, target = embeddings
    finally:
        hook.remove()
    loss = net.get_loss(y_pred, ys, X=Xs, training=True)
    term = adaptation(source, target)
    loss = loss + term
    net.history.record_batch("adaptation_loss", float(term.detach()))
    scaler = net.grad_scaler_
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(net.optimizer_)
    if net.group is not None and adaptation.discriminator is not None:
        # The domain classifier sits outside DistributedDataParallel's
        # module: average its gradients across the ranks by hand.
        for p in adaptation.discriminator.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(net.group.world_size)
    return {"loss": loss, "y_pred": y_pred}


# -- the data convention -----------------------------------------------------

def unlabelled_rows(y, regression):
    """Where ``y`` marks a sample as unlabelled: -1 (classification) or all-NaN (regression)."""
    y = np.asarray(y)
    if regression:
        if y.dtype.kind not in "fc":
            y = y.astype(np.float64)
        isnan = np.isnan(y)
        return isnan.reshape(len(y), -1).all(axis=1)
    if y.dtype.kind in "iuf":
        return y == -1
    if y.dtype.kind == "O":
        return np.array([isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                         and v == -1 for v in y], dtype=bool)
    return np.zeros(len(y), dtype=bool)


class DomainSplit:
    """Which rows of a fit are labelled, and which are the target domain's.

    Built by :func:`split_domains`. ``labelled`` and ``target`` are index
    arrays (``target`` None without adaptation).
    """

    def __init__(self, n, labelled, target):
        self.n = n
        self.labelled = labelled
        self.target = target

    def fill(self, encoded):
        """The encoded labels of the labelled rows, spread over all rows (zeros elsewhere)."""
        if len(self.labelled) == self.n:
            return encoded
        full = np.zeros((self.n,) + encoded.shape[1:], dtype=encoded.dtype)
        full[self.labelled] = encoded
        return full

    def labelled_samples(self, samples):
        """The labelled rows of ``samples``: the supervised loss's (and validation's)."""
        return samples if len(self.labelled) == self.n else samples.subset(self.labelled)

    def target_rows(self, samples):
        """The target domain's rows of ``samples`` (None without adaptation)."""
        return None if self.target is None else samples.subset(self.target)


def check_prediction_domain(sample_domain, X):
    """Check the ``sample_domain`` a domain-aware scorer passes to ``predict``.

    Predictions do not depend on the domain; for an in-memory ``X``, a value
    that could not mark its rows by skada's convention is refused rather
    than ignored (a lazy Dask ``X`` has no length to check it against).
    """
    if sample_domain is not None:
        check_domain(np.ravel(sample_domain), len(X))


def check_domain(sample_domain, n):
    """``sample_domain`` as a 1-D integer array of ``n`` nonzero values (skada's convention)."""
    domain = np.asarray(sample_domain)
    if domain.ndim != 1 or len(domain) != n:
        raise ValueError(f"sample_domain must hold one value per sample: {n} samples, "
                         f"sample_domain of shape {domain.shape}.")
    if domain.dtype.kind not in "iu" or np.any(domain == 0):
        raise ValueError("sample_domain must hold nonzero integers: positive for source "
                         "samples, negative for target samples (skada's convention).")
    return domain


def check_adaptation(estimator):
    """Refuse the settings under which ``adaptation`` cannot act (once the backbone is loaded)."""
    method = estimator.adaptation
    if method is None:
        return
    if estimator._contrastive():
        raise ValueError(f"adaptation={method!r} aligns the embeddings under the "
                         "classification loss; objective='contrastive' trains on pairs of "
                         "labelled samples, with no place for target samples. Use "
                         "objective='cross_entropy' with adaptation.")
    groups = estimator.backbone_.param_groups
    if n_frozen_groups(estimator.freeze, groups, auto_frozen(estimator.backbone_)) >= len(groups):
        raise ValueError(f"adaptation={method!r} moves the backbone's embeddings towards "
                         f"each other, but freeze={estimator.freeze!r} freezes all of the "
                         "backbone; freeze fewer groups (e.g. freeze='none'), or use "
                         "adaptation=None.")


def split_domains(estimator, y, sample_domain, regression):
    """Check ``y`` and ``sample_domain`` against ``adaptation``; the rows' roles.

    Without ``sample_domain`` and without adaptation, every row is labelled
    (a label -1 is a class, as in any classifier). Otherwise rows with
    ``y = -1`` / NaN are unlabelled target samples, and ``sample_domain``
    (when given) says which rows are the target's (negative values).

    Returns
    -------
    DomainSplit, y_labelled
    """
    name = type(estimator).__name__
    if y is None:
        raise ValueError(f"{name} requires y to be passed, but the target y is None.")
    y_arr = np.asarray(y)
    n = len(y_arr)
    method = estimator.adaptation
    if method is None and sample_domain is None:
        return DomainSplit(n, np.arange(n), None), y
    unlabelled = unlabelled_rows(y_arr, regression)
    if sample_domain is None:
        target = unlabelled
    else:
        target = check_domain(np.ravel(sample_domain), n) < 0
        if np.any(unlabelled & ~target):
            raise ValueError(f"{int(np.sum(unlabelled & ~target))} source samples "
                             "(sample_domain > 0) have no label (y = -1 or NaN); every "
                             "source sample needs one.")
    missing = "y = -1" if not regression else "y = NaN"
    if method is None:
        if unlabelled.any():
            raise ValueError(f"{int(unlabelled.sum())} samples are unlabelled ({missing}), "
                             "but adaptation=None trains on labels only; set adaptation to "
                             f"one of {ADAPTATIONS} to use them, or drop them.")
        return DomainSplit(n, np.arange(n), None), y
    if not target.any():
        raise ValueError(f"adaptation={method!r} needs samples of the target domain: give "
                         f"them with {missing} (unlabelled) or sample_domain < 0.")
    labelled = np.flatnonzero(~unlabelled)
    if len(labelled) == 0:
        raise ValueError("no sample has a label: adaptation needs labelled source samples.")
    return DomainSplit(n, labelled, np.flatnonzero(target)), y_arr[labelled]

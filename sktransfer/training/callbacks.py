"""The skorch callbacks of the fine-tuning loop, all in one place.

- :class:`RankMeanScoring`: the loss columns of the history, averaged over
  every rank's samples in a data-parallel fit;
- :class:`ValidatedEarlyStopping`: skorch's early stopping, idle in calls
  without validation data;
- :class:`ValidScore`: ``valid_acc`` / ``valid_r2`` from the validation pass;
- :class:`FreezeSchedule`: which parameter groups train in each epoch;
- :class:`LRSchedule`: skorch's ``LRScheduler`` with a fresh schedule per call.
"""

from functools import partial

import numpy as np
import torch
from skorch.callbacks import Callback, EarlyStopping, LRScheduler, PassthroughScoring

from .freezing import freeze_groups
from .optimization import constant, cosine, one_cycle


class RankMeanScoring(PassthroughScoring):
    """skorch's ``PassthroughScoring``, averaged over all ranks' samples in a data-parallel fit.

    Each rank sees its own shard of the training and validation data; the
    loss recorded (and the ``_best`` flag, and so early stopping) must be the
    same on every rank, so the sums and counts are added across ranks before
    the mean is taken.
    """

    def on_epoch_end(self, net, **kwargs):
        self.group_ = getattr(net, "group", None)
        super().on_epoch_end(net, **kwargs)

    def get_avg_score(self, history):
        phase = "train" if self.on_train else "valid"
        batches = history[-1, "batches"]
        # With sample_weight, each batch's loss is a weighted mean: the
        # epoch's is their mean weighted by each batch's total weight.
        weighted = bool(batches) and all(f"{phase}_weight" in b for b in batches
                                         if self.name in b)
        key = f"{phase}_weight" if weighted else f"{phase}_batch_size"
        if self.group_ is None and not weighted:
            return super().get_avg_score(history)
        sizes, scores = map(np.asarray, zip(*history[-1, "batches", :, [key, self.name]]))
        total, count = (sizes * scores).sum(), sizes.sum()
        if self.group_ is not None:
            total, count = self.group_.all_reduce([total, count])
        # Held-out samples whose weights are all zero: their loss counts as 0.
        return float(total / count) if count > 0 else 0.0


class ValidatedEarlyStopping(EarlyStopping):
    """skorch's ``EarlyStopping``, idle in training calls without validation data.

    ``partial_fit`` trains on every sample given, so its epochs have no
    validation loss to monitor; the estimator's net keeps its callbacks
    between calls, so the callback must simply wait for a ``fit``.
    """

    def on_epoch_end(self, net, **kwargs):
        if self.monitor in net.history[-1]:
            super().on_epoch_end(net, **kwargs)


class ValidScore(Callback):
    """Record ``valid_acc`` or ``valid_r2`` from the validation pass's outputs.

    The sums are kept on the device and read once per epoch, so scoring adds
    no forward pass and no synchronization per batch. ``valid_r2`` is the
    coefficient of determination averaged over outputs, as
    :func:`sklearn.metrics.r2_score` computes it.

    Parameters
    ----------
    score : {"accuracy", "subset_accuracy", "r2"} or None
        ``"subset_accuracy"``: multilabel outputs (logits), a sample counts
        as correct when every label is. With ``sample_weight``, the scores
        are weighted as scikit-learn's ``accuracy_score`` and ``r2_score``
        weight them. None records nothing.
    """

    def __init__(self, score=None):
        self.score = score

    def on_epoch_begin(self, net, **kwargs):
        self.sums_ = None

    def on_batch_end(self, net, batch=None, training=False, y_pred=None, **kwargs):
        if training or self.score is None:
            return
        y_true, weight = batch[1], None
        if isinstance(y_true, dict):  # with sample_weight: weighted scores
            weight = y_true["weight"].to(y_pred.device, torch.float64)
            y_true = y_true["target"]
        y_true = y_true.to(y_pred.device)
        y_pred = y_pred.detach().double()
        if weight is None:
            weight = torch.ones(len(y_true), device=y_pred.device, dtype=torch.float64)
        if self.score in ("accuracy", "subset_accuracy"):
            correct = (y_pred.argmax(1) == y_true if self.score == "accuracy"
                       else ((y_pred > 0) == (y_true > 0.5)).all(1))
            sums = torch.stack([(weight * correct).sum(), weight.sum()])
        else:
            y_true = y_true.double().reshape(y_pred.shape)
            w = weight.reshape(-1, *[1] * (y_true.ndim - 1))
            sums = torch.stack([(w * (y_true - y_pred) ** 2).sum(0), (w * y_true).sum(0),
                                (w * y_true ** 2).sum(0),
                                (w * torch.ones_like(y_true)).sum(0)])
        self.sums_ = sums if self.sums_ is None else self.sums_ + sums

    def on_epoch_end(self, net, dataset_valid=None, **kwargs):
        if self.score is None or self.sums_ is None:
            return
        group = getattr(net, "group", None)
        # In a data-parallel fit each rank scored its shard: add them up.
        sums = self.sums_.cpu().numpy() if group is None else group.all_reduce(self.sums_)
        self.sums_ = None  # no device memory held after training
        if not np.all(sums[-1] > 0):  # held-out samples whose weights are all zero
            return
        if self.score != "r2":
            net.history.record("valid_acc", float(sums[0] / sums[1]))
            return
        sse, total, squares, count = sums
        sst = squares - total ** 2 / count
        # A constant target is predicted perfectly or not at all (sklearn's convention).
        r2 = np.where(sst > 0, 1 - sse / np.where(sst > 0, sst, 1), np.where(sse > 0, 0.0, 1.0))
        net.history.record("valid_r2", float(r2.mean()))


class FreezeSchedule(Callback):
    """skorch callback applying ``freeze``, after ``freeze_epochs`` head-only epochs.

    For the first ``freeze_epochs`` epochs (counted over the estimator's whole
    history, so ``partial_fit`` continues the count) the whole backbone is
    frozen and only the head trains; from then on the first ``n_frozen``
    groups stay frozen. This is the LP-FT recipe (fastai's ``fine_tune``): a
    trained head first, so the random head's large early gradients do not
    distort the pretrained features. The estimators fit the head to
    convergence on the frozen embeddings before the first epoch
    (:func:`sktransfer.training.probe.fit_head`): a few epochs of stochastic steps on
    a few samples leave it far from the linear probe's optimum.

    Parameters
    ----------
    param_groups : list of (str, list of str)
        The backbone's groups, ordered input -> output.
    n_frozen : int
        Groups frozen after the head-only phase.
    freeze_epochs : int, default=0
        Length of the head-only phase.
    fixed : set of str, optional
        Backbone parameters that never train (under an adapter).
    """

    def __init__(self, param_groups, n_frozen, freeze_epochs=0, fixed=frozenset()):
        self.param_groups = param_groups
        self.n_frozen = n_frozen
        self.freeze_epochs = freeze_epochs
        self.fixed = fixed

    def on_epoch_begin(self, net, **kwargs):
        # The net has already opened this epoch in its history.
        done = len(net.history) - 1
        head_only = done < self.freeze_epochs
        n_frozen = len(self.param_groups) if head_only else self.n_frozen
        freeze_groups(net.module_, self.param_groups, n_frozen, self.fixed)


_SHAPES = {"onecycle": one_cycle, "cosine": cosine, None: constant}


class LRSchedule(LRScheduler):
    """skorch's ``LRScheduler`` stepping a fine-tuning schedule after every batch.

    Two differences from a plain ``LRScheduler(LambdaLR, step_every="batch")``:

    - every ``fit`` / ``partial_fit`` call starts a fresh schedule spanning
      that call's epochs, from each group's ``base_lr`` (skorch continues the
      schedule from the history's epoch count), so continuing training never
      starts from a rate annealed to zero;
    - ``event_lr`` records the head's rate (the last parameter group), not
      the first backbone group's, which discriminative rates make smaller.

    Parameters
    ----------
    schedule : {"onecycle", "cosine", None}
        See :func:`~sktransfer.training.optimization.one_cycle` and
        :func:`~sktransfer.training.optimization.cosine`; ``None``: constant rates.
    """

    def __init__(self, schedule):
        super().__init__(policy=torch.optim.lr_scheduler.LambdaLR, event_name=None,
                         step_every="batch")
        self.schedule = schedule

    def get_params(self, deep=True):
        # Only what __init__ takes: skorch's default lists every attribute,
        # so clone() would pass the fixed policy and step_every back to it.
        return {"schedule": self.schedule}

    def set_params(self, **params):
        for name, value in params.items():
            if name != "schedule":
                raise ValueError(f"LRSchedule has no parameter {name!r}; it takes schedule")
            self.schedule = value
        return self

    @property
    def kwargs(self):
        # What LambdaLR is built with: this call's multiplier, from step 0
        # (before any training, as simulate() asks, one step long).
        lr_lambda = getattr(self, "lr_lambda_", None) or partial(_SHAPES[self.schedule],
                                                                  total=1)
        return {"lr_lambda": lr_lambda, "last_epoch": -1}

    def on_train_begin(self, net, X=None, **kwargs):
        for group in net.optimizer_.param_groups:
            group["lr"] = group["base_lr"]
            group.pop("initial_lr", None)
        total = max(1, net.max_epochs * net.steps_per_epoch(len(X)))
        self.lr_lambda_ = partial(_SHAPES[self.schedule], total=total)
        super().on_train_begin(net, X=X, **kwargs)

    def on_batch_end(self, net, training=False, **kwargs):
        if training:
            # Before the step, as skorch records its own event.
            net.history.record_batch("event_lr", net.optimizer_.param_groups[-1]["lr"])
        # The schedule counts optimizer steps (gradient accumulation steps
        # once per group of batches).
        if getattr(net, "stepped_", True):
            super().on_batch_end(net, training=training, **kwargs)

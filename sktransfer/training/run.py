"""One training call of a fine-tuner: its parameters turned into the skorch loop's parts.

A :class:`TrainingRun` is made by ``fit`` and ``partial_fit`` for the length
of the call, with the process group it trains over (None outside a
data-parallel launch) passed in, never stored on the estimator. It builds
the :class:`~sktransfer.training.net.FineTuningNet` the first time, and
then runs the objective: cross-entropy end to end (after fitting the head
first when ``freeze_epochs > 0``), or contrastive pairs for the backbone
followed by the head.
"""

import copy
from functools import partial

import numpy as np
import torch
from skorch.callbacks import ProgressBar

from .._utils.device import resolve_device, resolve_precision
from .._utils.launch import is_main_process
from ..inputs import Collate, Samples
from .adaptation import DomainAdaptation, TargetStream
from .augment import FlipAndResizedCrop
from .callbacks import FreezeSchedule, LRSchedule, ValidatedEarlyStopping
from .contrastive import CosinePairs, PairRows
from .distributed import SeededShuffle, Shard, shard_size
from .freezing import auto_frozen, n_frozen_groups, norms_needing_two_samples, unfreeze_all
from .heads import BackboneWithHead
from .net import FineTuningNet, Rows
from .optimization import param_groups, resolve_optimizer
from .probe import fit_head


class TrainingRun:
    """The training of one ``fit`` / ``partial_fit`` call of a fine-tuner.

    Parameters
    ----------
    estimator : FineTunedClassifier or FineTunedRegressor
        The estimator being fitted, with ``backbone_``, ``head_`` and
        ``l2sp_`` built; the run sets its ``net_`` and ``history_``.
    group : TrainingGroup or None
        The processes this call trains over.
    target : Dataset or None
        The target domain's samples for ``adaptation`` (their labels unused).
    """

    def __init__(self, estimator, group=None, target=None):
        self.estimator = estimator
        self.group = group
        self.target = target

    def fit_model(self, train, valid, epochs, first):
        """Train for ``epochs`` with the objective; ``first``: the model's first training call.

        Cross-entropy: the network trains end to end (after the head is fitted
        to convergence on frozen embeddings when ``freeze_epochs > 0``).
        Contrastive: the backbone trains on pairs drawn from the labels, then
        the head is fitted to convergence on the new embeddings.
        """
        est = self.estimator
        if not est._contrastive():
            if first and est.freeze_epochs > 0:
                self.fit_head_to_convergence(train)
            self.train(train, valid, epochs)
            return
        groups = est.backbone_.param_groups
        if n_frozen_groups(est.freeze, groups, auto_frozen(est.backbone_)) >= len(groups):
            raise ValueError(f"objective='contrastive' trains the backbone, but freeze="
                             f"{est.freeze!r} freezes all of it; freeze fewer groups, or use "
                             "objective='cross_entropy' for a linear probe.")
        self.train(self.pairs(train), self.pairs(valid), epochs)
        self.fit_head_to_convergence(train)
        if self.group is not None:
            # Every rank fitted the head on the same embeddings; on GPUs,
            # non-deterministic kernels could still leave them a rounding apart.
            self.group.broadcast_module(est.head_)

    def pairs(self, rows):
        """Pairs of ``rows`` for the contrastive objective, drawn from the seeded stream."""
        if rows is None:
            return None
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        return PairRows(rows, targets_of(rows), self.estimator.n_pairs, seed)

    def fit_head_to_convergence(self, rows):
        """Fit ``head_`` on the backbone's embeddings of ``rows`` (no augmentation)."""
        est = self.estimator
        plain = rows.samples.subset(rows.indices) if isinstance(rows, Rows) else rows
        embeddings = est._predict("transform", Samples(plain.data, plain.kind),
                                  resident=False)
        fit_head(est.head_, embeddings, targets_of(rows), est._criterion())

    def build_net(self):
        """The skorch net that trains the estimator's model, its history carried over."""
        est = self.estimator
        backbone = est.backbone_
        # Contrastive training puts CosinePairs where the head goes: the
        # backbone learns from pair similarities and the real head is fitted
        # afterwards, so there is no head-only phase and no accuracy to score.
        contrastive = est._contrastive()
        device = resolve_device(est.device)
        optimizer, optimizer_kwargs = resolve_optimizer(est.optimizer)
        groups = partial(param_groups, backbone_groups=backbone.param_groups, lr=est._lr(),
                         backbone_lr_mult=est.backbone_lr_mult, weight_decay=est.weight_decay)
        loader = {"collate_fn": Collate(backbone.preprocess), "num_workers": est.num_workers,
                  "pin_memory": device.type == "cuda",
                  "persistent_workers": est.num_workers > 0}
        n_frozen = n_frozen_groups(est.freeze, backbone.param_groups, auto_frozen(backbone))
        callbacks = [
            ("freeze", FreezeSchedule(backbone.param_groups, n_frozen,
                                      0 if contrastive else est.freeze_epochs)),
            ("lr_schedule", LRSchedule(est.schedule)),
        ]
        if est._patience() is not None:
            callbacks.append(("early_stopping", ValidatedEarlyStopping(
                monitor="valid_loss", patience=est._patience(), load_best=True)))
        # In a data-parallel fit, rank 0 alone prints the table and the bar.
        verbose = int(est.verbose) if is_main_process() else 0
        if verbose >= 2:
            callbacks.append(("progress_bar", ProgressBar()))
        callbacks += copy.deepcopy(list(est.callbacks or []))
        net = FineTuningNet(
            BackboneWithHead(backbone.module, CosinePairs()) if contrastive else est._model(),
            torch.nn.MSELoss() if contrastive else est._criterion(),
            optimizer_groups=groups, penalty=est.l2sp_,
            augment=FlipAndResizedCrop() if est.augment else None,
            amp_dtype=resolve_precision(est.precision, device),
            score=None if contrastive else est._score_name,
            sync_batchnorm=bool(est.sync_batchnorm),
            image_input=backbone.modality == "image", adaptation=self.adaptation(),
            optimizer=optimizer, lr=est._lr(), max_epochs=est._max_epochs(),
            batch_size=est.batch_size, train_split=None, callbacks=callbacks,
            verbose=verbose, device=str(device),
            **{f"iterator_train__{k}": v for k, v in loader.items()},
            **{f"iterator_valid__{k}": v for k, v in loader.items()},
            **{f"optimizer__{k}": v for k, v in optimizer_kwargs.items()},
        )
        net.initialize()
        if getattr(est, "history_", None) is not None:
            net.history_ = est.history_
        if getattr(est, "_optimizer_state", None) is not None:
            net.optimizer_.load_state_dict(est.__dict__.pop("_optimizer_state"))
        est.net_ = net
        est.history_ = net.history_
        return net

    def adaptation(self):
        """The domain-adaptation term of this training, or None."""
        est = self.estimator
        if self.target is None:
            return None
        return DomainAdaptation(est.adaptation, est.adaptation_weight, est.n_features_out_)

    def train(self, train, valid, epochs):
        """Train the estimator's net for ``epochs`` over ``train`` (validating on ``valid``)."""
        est, group = self.estimator, self.group
        net = getattr(est, "net_", None)
        if net is None:
            net = self.build_net()
        if group is not None and len(train) < group.world_size:
            raise ValueError(f"{len(train)} training samples cannot be shared among the "
                             f"{group.world_size} processes of this distributed fit; give at "
                             "least one sample per process, or use distributed=False.")
        # BatchNorm fails on a training batch of one sample: drop such a last
        # batch, and refuse up front where every batch would be that small.
        # (In a data-parallel fit each rank's batches come from its shard.)
        n_train = shard_size(len(train), group)
        drop_last = bool(n_train % est.batch_size == 1 and n_train > est.batch_size)
        if est.batch_size == 1 or n_train == 1:
            self.check_single_sample_batches(net, train)
        # Shuffling and worker seeds come from their own seed, drawn from the
        # training stream: the same model whatever num_workers is.
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        rank, world_size = (0, 1) if group is None else (group.rank, group.world_size)
        sampler = SeededShuffle(len(train), seed, numbered_epochs=isinstance(train, PairRows),
                                rank=rank, world_size=world_size)
        valid_sampler = None if group is None or valid is None else Shard(
            len(valid), rank, world_size)
        if net.adaptation is not None:
            net.adaptation_.stream = TargetStream(
                self.target, Collate(est.backbone_.preprocess), est.batch_size, seed + 2,
                net.batches_per_epoch(len(train)) * epochs, rank, world_size)
        if group is not None:
            # Every rank shares the seed; dropout and augmentation draws
            # should still differ between the ranks' samples.
            torch.manual_seed(seed + 1 + rank)
        try:
            net.train_call(train, valid, epochs=epochs, group=group, sampler=sampler,
                           generator=torch.Generator().manual_seed(seed),
                           valid_sampler=valid_sampler, drop_last=drop_last)
        finally:
            # The fitted weights leave the accelerator, trainable again and in
            # evaluation mode.
            unfreeze_all(net.module_)
            net.module_.eval()
            net.release_training_state(keep_optimizer=est.keep_optimizer)
            if net.adaptation is not None:
                net.adaptation_.stream = None  # the call's data: not kept
        if net.interrupted_:
            # skorch swallows the interrupt; the user asked to stop, so the
            # caller (a script, a GridSearchCV) must stop too.
            raise KeyboardInterrupt(
                f"training interrupted in epoch {len(est.history_)}; "
                f"{type(est).__name__} keeps the weights trained so far")

    def check_single_sample_batches(self, net, train):
        """Raise a ValueError where a BatchNorm layer would train on one value per channel."""
        est = self.estimator
        inputs, _ = Collate(est.backbone_.preprocess)(train.__getitems__(np.arange(1)))
        n_frozen = n_frozen_groups(est.freeze, est.backbone_.param_groups,
                                   auto_frozen(est.backbone_))
        norms = norms_needing_two_samples(net.module_, est.backbone_.param_groups, n_frozen,
                                          inputs)
        if not norms:
            return
        if est.batch_size == 1:
            cause, fix = ("batch_size=1 gives", "use batch_size >= 2")
        else:
            held = (f" after holding out validation_fraction={est.validation_fraction} "
                    "for early stopping" if est._patience() is not None else "")
            cause = f"1 training sample{held} gives"
            fix = ("give more samples" + (", a smaller validation_fraction or "
                                          "early_stopping=None" if held else ""))
        raise ValueError(
            f"{cause} training batches of one sample, and the BatchNorm layers {norms} "
            f"cannot train on a single value per channel; {fix}, or freeze those layers "
            "(frozen BatchNorm layers stay in evaluation mode).")


def targets_of(rows):
    """The targets of a :class:`~sktransfer.inputs.Samples` or of :class:`Rows` of one."""
    if isinstance(rows, Rows):
        return rows.samples.y[rows.indices]
    return rows.y

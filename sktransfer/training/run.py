"""One training call of a fine-tuner: its plan turned into the skorch loop's parts.

A :class:`TrainingRun` is made by ``fit`` and ``partial_fit`` for the length
of the call, from the :class:`~sktransfer.training.plan.TrainingPlan` the
estimator builds, with the process group it trains over (None outside a
data-parallel launch) passed in. It builds the
:class:`~sktransfer.training.net.FineTuningNet` the first time (or continues
the net it is given), and then runs the objective: cross-entropy end to end
(after fitting the head first when ``freeze_epochs > 0``), or contrastive
pairs for the backbone followed by the head. It hands back the net and its
history (:class:`Trained`); the estimator keeps them.
"""

import copy
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
from skorch.callbacks import ProgressBar

from .._utils.device import resolve_device, resolve_precision
from .._utils.launch import is_main_process
from ..inputs import Collate, Samples, plain_targets
from .adaptation import DomainAdaptation, TargetStream
from .augment import FlipAndResizedCrop
from .callbacks import FreezeSchedule, LRSchedule, ValidatedEarlyStopping
from .checkpointing import checkpointing
from .contrastive import CosinePairs, PairRows
from .distributed import SeededShuffle, Shard, shard_size
from .freezing import norms_needing_two_samples, unfreeze_all
from .heads import BackboneWithHead
from .net import FineTuningNet, Rows
from .optimization import param_groups, resolve_optimizer
from .probe import fit_head
from .weights import WeightedLoss, weights_of


class Trained(NamedTuple):
    """What a training call leaves: the net, its history, and whether it was built now."""

    net: FineTuningNet  # the skorch net (its module_ is the trained model)
    history: object  # the net's skorch History, earlier calls' epochs included
    built: bool  # True when this call built the net (and loaded plan.optimizer_state)


class TrainingRun:
    """The training of one ``fit`` / ``partial_fit`` call of a fine-tuner.

    Parameters
    ----------
    plan : TrainingPlan
        What to train and how; its backbone, head and penalty are trained in
        place.
    group : TrainingGroup or None
        The processes this call trains over.
    target : Dataset or None
        The target domain's samples for ``adaptation`` (their labels unused).
    net : FineTuningNet or None
        The net of the model's earlier calls, to continue; None builds one
        (resuming from ``plan.history`` and ``plan.optimizer_state``).

    Attributes
    ----------
    net : FineTuningNet or None
        The net, once there is one (also after an interrupted call).
    """

    def __init__(self, plan, group=None, target=None, net=None):
        self.plan = plan
        self.group = group
        self.target = target
        self.net = net
        self.built = False

    def trained(self):
        """The net and history this call leaves, or None where no net was built."""
        if self.net is None:
            return None
        return Trained(self.net, self.net.history_, self.built)

    def fit_model(self, train, valid, epochs, first):
        """Train for ``epochs`` with the objective; ``first``: the model's first training call.

        Cross-entropy: the network trains end to end (after the head is fitted
        to convergence on frozen embeddings when ``freeze_epochs > 0``).
        Contrastive: the backbone trains on pairs drawn from the labels, then
        the head is fitted to convergence on the new embeddings.

        Returns
        -------
        Trained
        """
        plan = self.plan
        if not plan.contrastive:
            if first and plan.freeze_epochs > 0:
                self.fit_head_to_convergence(train)
            self.train(train, valid, epochs)
            return self.trained()
        if plan.trains_no_backbone_group:
            raise ValueError(f"objective='contrastive' trains the backbone, but freeze="
                             f"{plan.freeze!r} freezes all of it; freeze fewer groups, or use "
                             "objective='cross_entropy' for a linear probe.")
        self.train(self.pairs(train), self.pairs(valid), epochs)
        self.fit_head_to_convergence(train)
        if self.group is not None:
            # Every rank fitted the head on the same embeddings; on GPUs,
            # non-deterministic kernels could still leave them a rounding apart.
            self.group.broadcast_module(plan.head)
        return self.trained()

    def pairs(self, rows):
        """Pairs of ``rows`` for the contrastive objective, drawn from the seeded stream."""
        if rows is None:
            return None
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        return PairRows(rows, targets_of(rows), self.plan.n_pairs, seed,
                        weight=weights_of(rows_targets(rows)))

    def fit_head_to_convergence(self, rows):
        """Fit the head on the backbone's embeddings of ``rows`` (no augmentation)."""
        plan = self.plan
        plain = rows.samples.subset(rows.indices) if isinstance(rows, Rows) else rows
        embeddings = plan.embed(Samples(plain.data, plain.kind))
        fit_head(plan.head, embeddings, targets_of(rows), plan.criterion(),
                 sample_weight=weights_of(rows_targets(rows)))

    def build_net(self):
        """The skorch net that trains the plan's model, the plan's history carried over."""
        plan = self.plan
        backbone = plan.backbone
        # Contrastive training puts CosinePairs where the head goes: the
        # backbone learns from pair similarities and the real head is fitted
        # afterwards, so there is no head-only phase and no accuracy to score.
        contrastive = plan.contrastive
        device = resolve_device(plan.device)
        optimizer, optimizer_kwargs = resolve_optimizer(plan.optimizer)
        groups = partial(param_groups, backbone_groups=backbone.param_groups, lr=plan.lr,
                         backbone_lr_mult=plan.backbone_lr_mult, weight_decay=plan.weight_decay)
        loader = {"collate_fn": Collate(backbone.preprocess), "num_workers": plan.num_workers,
                  "pin_memory": device.type == "cuda",
                  "persistent_workers": plan.num_workers > 0}
        callbacks = [
            ("freeze", FreezeSchedule(backbone.param_groups, plan.n_frozen,
                                      0 if contrastive else plan.freeze_epochs,
                                      fixed=backbone.fixed)),
            ("lr_schedule", LRSchedule(plan.schedule)),
        ]
        if plan.patience is not None:
            callbacks.append(("early_stopping", ValidatedEarlyStopping(
                monitor="valid_loss", patience=plan.patience, load_best=True)))
        # In a data-parallel fit, rank 0 alone prints the table and the bar.
        verbose = int(plan.verbose) if is_main_process() else 0
        if verbose >= 2:
            callbacks.append(("progress_bar", ProgressBar()))
        callbacks += copy.deepcopy(list(plan.callbacks))
        net = FineTuningNet(
            BackboneWithHead(backbone.module, CosinePairs() if contrastive else plan.head),
            # Weighted where the batches bring weights (sample_weight), else the plain loss.
            WeightedLoss(torch.nn.MSELoss() if contrastive else plan.criterion()),
            optimizer_groups=groups, penalty=plan.penalty,
            augment=FlipAndResizedCrop() if plan.augment else None,
            amp_dtype=resolve_precision(plan.precision, device),
            score=None if contrastive else plan.score,
            sync_batchnorm=bool(plan.sync_batchnorm),
            image_input=backbone.takes_images, adaptation=self.adaptation(),
            accumulation_steps=plan.accumulation_steps,
            optimizer=optimizer, lr=plan.lr, max_epochs=plan.max_epochs,
            batch_size=plan.batch_size, train_split=None, callbacks=callbacks,
            verbose=verbose, device=str(device),
            **{f"iterator_train__{k}": v for k, v in loader.items()},
            **{f"iterator_valid__{k}": v for k, v in loader.items()},
            **{f"optimizer__{k}": v for k, v in optimizer_kwargs.items()},
        )
        net.initialize()
        if plan.history is not None:
            net.history_ = plan.history
        if plan.optimizer_state is not None:
            net.optimizer_.load_state_dict(plan.optimizer_state)
        self.net, self.built = net, True
        return net

    def adaptation(self):
        """The domain-adaptation term of this training, or None."""
        plan = self.plan
        if self.target is None:
            return None
        return DomainAdaptation(plan.adaptation, plan.adaptation_weight, plan.embedding_width)

    def train(self, train, valid, epochs):
        """Train the net for ``epochs`` over ``train`` (validating on ``valid``)."""
        plan, group = self.plan, self.group
        net = self.net
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
        drop_last = bool(n_train % plan.batch_size == 1 and n_train > plan.batch_size)
        if plan.batch_size == 1 or n_train == 1:
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
                self.target, Collate(plan.backbone.preprocess), plan.batch_size, seed + 2,
                net.batches_per_epoch(len(train)) * epochs, rank, world_size)
        if group is not None:
            # Every rank shares the seed; dropout and augmentation draws
            # should still differ between the ranks' samples.
            torch.manual_seed(seed + 1 + rank)
        try:
            # Only for the loop: the backbone leaves the call as it came.
            with checkpointing(plan.backbone.module, plan.backbone.param_groups,
                               enabled=plan.checkpointing):
                net.train_call(train, valid, epochs=epochs, group=group, sampler=sampler,
                               generator=torch.Generator().manual_seed(seed),
                               valid_sampler=valid_sampler, drop_last=drop_last)
        finally:
            # The fitted weights leave the accelerator, trainable again and in
            # evaluation mode.
            unfreeze_all(net.module_, plan.backbone.fixed)
            net.module_.eval()
            net.release_training_state(keep_optimizer=plan.keep_optimizer)
            if net.adaptation is not None:
                net.adaptation_.stream = None  # the call's data: not kept
        if net.interrupted_:
            # skorch swallows the interrupt; the user asked to stop, so the
            # caller (a script, a GridSearchCV) must stop too.
            raise KeyboardInterrupt(
                f"training interrupted in epoch {len(net.history_)}; "
                f"{plan.name} keeps the weights trained so far")

    def check_single_sample_batches(self, net, train):
        """Raise a ValueError where a BatchNorm layer would train on one value per channel."""
        plan = self.plan
        inputs, _ = Collate(plan.backbone.preprocess)(train.__getitems__(np.arange(1)))
        norms = norms_needing_two_samples(net.module_, plan.backbone.param_groups,
                                          plan.n_frozen, inputs, plan.backbone.fixed)
        if not norms:
            return
        if plan.batch_size == 1:
            cause, fix = ("batch_size=1 gives", "use batch_size >= 2")
        else:
            held = (f" after holding out validation_fraction={plan.validation_fraction} "
                    "for early stopping" if plan.patience is not None else "")
            cause = f"1 training sample{held} gives"
            fix = ("give more samples" + (", a smaller validation_fraction or "
                                          "early_stopping=None" if held else ""))
        raise ValueError(
            f"{cause} training batches of one sample, and the BatchNorm layers {norms} "
            f"cannot train on a single value per channel; {fix}, or freeze those layers "
            "(frozen BatchNorm layers stay in evaluation mode).")


def rows_targets(rows):
    """The targets of a :class:`~sktransfer.inputs.Samples` or of :class:`Rows` of one,
    with their weights where they have them."""
    if isinstance(rows, Rows):
        return rows.samples.y[rows.indices]
    return rows.y


def targets_of(rows):
    """The target values of ``rows`` (see :func:`rows_targets`), without weights."""
    return plain_targets(rows_targets(rows))

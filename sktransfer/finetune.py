"""FineTunedClassifier and FineTunedRegressor: parameter transfer on skorch.

A pretrained backbone gets a new head and is trained on the target task,
with the controls that make transfer work on little data: freezing,
head-first training, discriminative learning rates, L2-SP, early stopping
and light augmentation. skorch runs the training loop underneath
(:mod:`sktransfer._net`); this module turns the estimator's parameters into
that loop's parts and keeps the scikit-learn contract.
"""

import contextlib
import copy
import numbers
from functools import partial

import numpy as np
import torch
from skorch.callbacks import ProgressBar
from skorch.helper import predefined_split
from sklearn.base import (BaseEstimator, ClassifierMixin, ClassNamePrefixFeaturesOutMixin,
                          RegressorMixin, TransformerMixin)
from sklearn.model_selection import train_test_split
from sklearn.utils import TransformerTags, compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d

from ._utils.device import resolve_device, resolve_precision
from ._utils.seeding import seed_from, seeded
from ._net import FineTuningNet, Rows, ValidatedEarlyStopping
from .distributed import (SeededShuffle, Shard, is_main_process, shard_size,
                          shared_random_state, training_group)
from .inference import predict_batches
from .augment import FlipAndResizedCrop
from ._weights_cache import load_backbone_cached
from .chaining import KeepsTrainedBackbone
from .freezing import (FreezeSchedule, check_freeze, n_frozen_groups, norms_needing_two_samples,
                       unfreeze_all)
from .heads import BackboneWithHead, check_head, make_head
from .contrastive import CosinePairs, PairRows
from .inputs import Collate, Samples, estimator_samples
from .optimization import LRSchedule, check_schedule, param_groups, resolve_optimizer
from .probe import fit_head
from .regularizers import L2SP

_PARAMS_DOC = """
    backbone : str, nn.Module, callable or fitted estimator, default="torchvision:resnet18"
        ``"torchvision:<name>"``, ``"timm:<name>"``, ``"hf:<model id or local
        directory>"``, an ``nn.Module`` (its forward output is the embedding),
        a zero-argument callable returning one, or a fitted sktransfer
        estimator, whose (fine-tuned) backbone is the starting point.
    weights : "DEFAULT", str, None or path, default="DEFAULT"
        ``"DEFAULT"`` loads the source's pretrained weights (for a module or a
        fitted estimator: the weights it has); a torchvision tag such as
        ``"IMAGENET1K_V2"``; ``None`` for random initialization (training from
        scratch); or a path to a local ``.pt``/``.pth``/``.safetensors`` file.
    head : tuple of int, optional
        ``None``: one linear layer on the embedding. A tuple of hidden sizes,
        such as ``(256,)``: an MLP with ReLU activations.
    dropout : float, default=0.0
        Dropout probability before each linear layer of the head.
    freeze : {"none", "backbone"} or int, default="none"
        ``"none"``: the whole network trains. ``"backbone"``: only the head
        trains (a linear probe with the default head). An int N: the first N
        parameter groups of the backbone (``backbone_.param_groups``, input
        first) stay frozen. Frozen BatchNorm layers stay in evaluation mode, so
        their running statistics do not drift either.
    freeze_epochs : int, default=0
        Head first (LP-FT, Kumar et al. 2022): before training, fit the head
        to convergence on the frozen backbone's embeddings (full-batch
        L-BFGS, the solution ``LogisticRegression`` / ``Ridge`` with their
        default penalty would find; see :func:`sktransfer.probe.fit_head`),
        then train the head alone (whole backbone frozen) for this many
        epochs, then apply ``freeze``. Fine-tuning then starts from the linear
        probe's optimum rather than from a random head whose large early
        gradients distort the pretrained features. With ``freeze="backbone"``
        the fitted head is the linear probe, and the epochs only refine it
        (at the smaller default ``lr`` of head-first training).
    lr : float or None, default=None
        Learning rate of the head (the peak rate under ``"onecycle"``); the
        backbone's groups train at it times ``backbone_lr_mult`` powers.
        ``None`` picks it by how training starts, from measurements at few
        labels per class (user guide, "Few labels"): ``1e-3`` when a new head
        trains from random weights; ``1e-4`` when the head is first fitted to
        convergence (``freeze_epochs > 0``): only the pretrained features
        move then, and larger steps wreck them (LP-FT on all-MiniLM-L6-v2 at
        8 labels per class: 0.681 at 1e-4 against 0.584 at 1e-3, frozen
        features 0.650); ``2e-4`` with ``objective="contrastive"``, where it
        is the backbone's rate (the head is fitted afterwards).
    backbone_lr_mult : float, default=1.0
        Discriminative learning rates: backbone group ``i`` (0-based, input
        first) of ``G`` trains at ``lr * backbone_lr_mult ** (G - i)``. A value
        such as 0.5 gives the last backbone group half the head's rate and
        earlier groups geometrically smaller ones.
    weight_decay : float, default=0.01
        Weight decay of weight matrices and kernels; biases and normalization
        parameters are never decayed.
    optimizer : {"adamw", "adam", "sgd"} or torch.optim.Optimizer class, default="adamw"
        ``"sgd"`` uses Nesterov momentum 0.9. A class is called as
        ``optimizer(param_groups, lr=lr)``.
    schedule : {"onecycle", "cosine"} or None, default="onecycle"
        Learning-rate schedule stepped every batch, spanning the epochs of one
        ``fit`` (or ``partial_fit``) call: ``"onecycle"`` warms up over the
        first 25% of steps then anneals; ``"cosine"`` decays from ``lr``
        towards zero; ``None`` keeps the rates constant.
    l2sp : float, default=0.0
        Strength alpha of the L2-SP penalty added to the training loss:
        ``alpha/2 * sum ||w - w_pretrained||^2`` over the backbone's
        (transferred) parameters plus ``alpha/2 * sum ||w||^2`` over the head's
        (see :class:`~sktransfer.regularizers.L2SP`). It keeps the weights
        near the pretrained ones; consider ``weight_decay=0`` with it, since
        weight decay pulls towards zero instead.
    max_epochs : int or None, default=None
        Epochs of ``fit``. ``None``: 10, or 3 with ``objective="contrastive"``
        (each of its epochs passes over ``n_pairs`` pairs per sample).
    batch_size : int, default=32
        Samples per training and prediction batch.
    early_stopping : int or bool, optional
        Patience: hold out ``validation_fraction`` of the training data, stop
        when the validation loss has not improved for this many epochs, and
        restore the weights of the best epoch. ``True`` means a patience of 5
        epochs: enough to ride out the noisy validation loss of a small
        held-out set, few enough not to train long past the best epoch.
        ``None`` or ``False``: train on all data for ``max_epochs`` epochs.
    validation_fraction : float, default=0.1
        Share of the data held out when ``early_stopping`` is set (stratified
        by class for classifiers when possible).
    augment : bool, default=False
        Light augmentation of training batches for image backbones: random
        horizontal flip and random resized crop (area 60-100%), applied to the
        preprocessed batch on the training device.
    device : str, default="auto"
        ``"auto"`` uses CUDA, then Apple MPS, then the CPU; or any torch device
        string. Fitted weights are kept on the CPU between calls.
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        Autocast dtype (automatic mixed precision); ``"auto"`` is bf16 (fp16
        with loss scaling on GPUs without bf16) on CUDA and fp32 elsewhere.
    num_workers : int, default=0
        DataLoader worker processes that decode and preprocess batches.
    image_size : int, optional
        Crop side fed to an image backbone instead of its weights' own.
    random_state : int, RandomState or None, default=None
        Seeds initialization, shuffling, dropout, augmentation and the
        validation split: on the CPU, the same seed and data give the same
        model.
    verbose : int, default=0
        0: silent; 1: a table of losses and scores after every epoch; 2: also
        a progress bar over batches.
    callbacks : list of skorch callbacks, optional
        Extra skorch callbacks (instances or ``(name, callback)`` pairs), for
        example ``skorch.callbacks.GradientNormClipping``. They are copied at
        the start of each ``fit``.
    keep_optimizer : bool, default=False
        Keep the optimizer's state (such as Adam's moment estimates) after
        training, on the CPU and in pickles, so that ``partial_fit`` continues
        exactly. Off by default, the state is released when training ends (it
        is twice the size of the model), and a ``partial_fit`` after ``fit``
        starts with fresh optimizer moments.
    distributed : {"auto", True, False}, default="auto"
        Data-parallel training when the script runs as several processes,
        launched by ``torchrun --nproc_per_node=N`` (or ``accelerate
        launch``, or ``srun`` with ``MASTER_ADDR`` and ``MASTER_PORT`` set):
        every rank calls ``fit`` with the same data, trains on its own shard
        of each epoch (``batch_size`` samples per step and process, so the
        effective batch is ``N * batch_size``), gradients are averaged, and
        every rank ends with the same weights. ``"auto"`` joins the launch's
        process group (initializing it, NCCL on CUDA and gloo on the CPU,
        when nothing else did) and trains alone outside a launch; ``True``
        raises outside one; ``False`` trains in this process alone even under
        a launch. See the user guide, "Multi-GPU and multi-node fine-tuning".
    sync_batchnorm : bool, default=False
        In a data-parallel fit on CUDA, compute BatchNorm statistics over the
        batches of all processes (``SyncBatchNorm``) instead of each
        process's own; frozen BatchNorm layers stay frozen."""

_ATTRIBUTES_DOC = """
    backbone_ : Backbone
        The fine-tuned backbone (network, preprocessing and layer groups);
        pass the fitted estimator as ``backbone=`` to another estimator to
        start from it.
    head_ : torch.nn.Module
        The trained head.
    l2sp_ : L2SP or None
        The L2-SP penalty and its reference weights (when ``l2sp > 0``).
    net_ : skorch.NeuralNet
        The skorch net that trains the model; rebuilt when needed, never
        pickled.
    history_ : skorch.History
        Per epoch: ``train_loss`` (including the L2-SP penalty), and with
        early stopping ``valid_loss`` and the validation score, ``dur``, and
        per batch the losses and the head's learning rate ``event_lr``.
    n_features_out_ : int
        Width of the embeddings :meth:`transform` returns.
    n_features_in_ : int
        Columns seen in ``fit`` (tensor backbones only).
    feature_names_in_ : ndarray of str
        Column names seen in ``fit`` (tensor backbones given a DataFrame)."""


#: The training objectives of FineTunedClassifier.
OBJECTIVES = ("cross_entropy", "contrastive")

#: Pairs per sample and epoch of objective="contrastive" (see FineTunedClassifier).
N_PAIRS = 8

#: ``lr=None``: the rate for a head trained from random weights, for fine-tuning
#: from a head fitted first (freeze_epochs > 0), and for contrastive training.
#: Measured at 8 labels per class (benchmarks/bench_fewshot.py).
DEFAULT_LR = {"new_head": 1e-3, "fitted_head": 1e-4, "contrastive": 2e-4}

#: ``max_epochs=None``: the epochs of each objective.
DEFAULT_MAX_EPOCHS = {"cross_entropy": 10, "contrastive": 3}

#: The patience of ``early_stopping=True``: a few epochs of a noisy validation
#: loss on small data sets, without paying for many epochs past the best one.
DEFAULT_PATIENCE = 5


class _FineTuned(KeepsTrainedBackbone, ClassNamePrefixFeaturesOutMixin, TransformerMixin,
                 BaseEstimator):
    """What the classifier and the regressor share: everything but the target."""

    _score_name = None  # "accuracy" or "r2": the validation score recorded per epoch

    def __init__(self, backbone="torchvision:resnet18", weights="DEFAULT", head=None, dropout=0.0,
                 freeze="none", freeze_epochs=0, lr=None, backbone_lr_mult=1.0,
                 weight_decay=0.01, optimizer="adamw", schedule="onecycle", l2sp=0.0,
                 max_epochs=None, batch_size=32, early_stopping=None, validation_fraction=0.1,
                 augment=False, device="auto", precision="auto", num_workers=0, image_size=None,
                 random_state=None, verbose=0, callbacks=None, keep_optimizer=False,
                 distributed="auto", sync_batchnorm=False):
        self.backbone = backbone
        self.weights = weights
        self.head = head
        self.dropout = dropout
        self.freeze = freeze
        self.freeze_epochs = freeze_epochs
        self.lr = lr
        self.backbone_lr_mult = backbone_lr_mult
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.schedule = schedule
        self.l2sp = l2sp
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.augment = augment
        self.device = device
        self.precision = precision
        self.num_workers = num_workers
        self.image_size = image_size
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks
        self.keep_optimizer = keep_optimizer
        self.distributed = distributed
        self.sync_batchnorm = sync_batchnorm

    # -- public API ------------------------------------------------------

    def fit(self, X, y):
        """Load the backbone, put a new head on it and train for ``max_epochs``.

        Parameters
        ----------
        X : array-like, list of paths, PIL images or strings
            Samples of the kind the backbone takes.
        y : array-like
            Targets.

        Returns
        -------
        self

        Raises
        ------
        KeyboardInterrupt
            When training is interrupted (Ctrl-C, or a callback raising it).
            The estimator is then fitted with the weights trained so far,
            back on the CPU and in evaluation mode, and ``history_`` ends at
            the epoch where it stopped (the last row is incomplete when the
            interrupt came mid-epoch): ``partial_fit`` continues from there.
            Early stopping ends training without an exception.
        """
        self._check_params()
        target = self._check_y(y, reset=True)
        with self._training_group(target) as random_state:
            samples = self._start(X, target, random_state)
            with seeded(random_state):
                train, valid = self._split(samples)
                self._fit_model(train, valid, self._max_epochs(), first=True)
        return self

    def _partial_fit(self, X, y):
        first = not self.__sklearn_is_fitted__()
        if first:
            self._check_params()
        target = self._check_y(y, reset=first)
        with self._training_group(target) as random_state:
            if first:
                samples = self._start(X, target, random_state)
                with seeded(random_state):
                    self._fit_model(samples, None, 1, first=True)
                return self
            samples = self._samples(X, reset=False, target=target)
            # A different seed per call: the same seed would repeat the same
            # shuffling and dropout masks every epoch.
            seed = None if random_state is None else (
                seed_from(random_state) + len(self.history_)) % (2**31 - 1)
            with seeded(seed):
                self._fit_model(samples, None, 1, first=False)
        return self

    @contextlib.contextmanager
    def _training_group(self, target):
        """Join the processes this training call runs over, if any; yields its random_state.

        Outside a launch (or with ``distributed=False``) the group is None
        and ``random_state`` is the parameter. In a data-parallel fit, every
        rank checks that all were given the same targets and trains with
        rank 0's seed, so that the head's initialization, the validation
        split and the shuffling agree.
        """
        with training_group(self.distributed, resolve_device(self.device)) as group:
            self._group = group
            try:
                if group is not None:
                    # Parameters that change how a rank loads or prints, not
                    # what it trains, may differ (verbose on rank 0 only).
                    params = {k: v for k, v in self.get_params(deep=False).items()
                              if k not in ("verbose", "num_workers")}
                    group.check_same_data(target, params)
                    if self.sync_batchnorm and group.device.type != "cuda":
                        raise ValueError(f"sync_batchnorm=True needs CUDA devices: PyTorch's "
                                         f"SyncBatchNorm does not run on {group.device.type}; "
                                         "use sync_batchnorm=False on the CPU.")
                yield shared_random_state(group, self.random_state)
            finally:
                self.__dict__.pop("_group", None)

    def fit_transform(self, X, y):
        """Fit, then embed ``X`` with the fine-tuned backbone.

        Parameters
        ----------
        X : array-like, list of paths, PIL images or strings
        y : array-like

        Returns
        -------
        ndarray of shape (n_samples, n_features_out_), float32
        """
        return self.fit(X, y).transform(X)

    def transform(self, X):
        """Embed ``X`` with the fine-tuned backbone.

        Parameters
        ----------
        X : array-like, list of paths, PIL images or strings

        Returns
        -------
        ndarray of shape (n_samples, n_features_out_), float32
        """
        check_is_fitted(self)
        samples = self._samples(X, reset=False)
        return self._predict(self.backbone_.module, samples)

    def __sklearn_is_fitted__(self):
        # history_ is set when the net is built, after the head: an interrupt
        # before then leaves the estimator unfitted rather than half-built.
        return hasattr(self, "head_") and hasattr(self, "history_")

    @property
    def _n_features_out(self):
        # Read by get_feature_names_out: "finetunedclassifier0", ...
        return self.n_features_out_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        # transform() gives the fine-tuned embeddings, as float32.
        tags.transformer_tags = TransformerTags(preserves_dtype=["float32"])
        return tags

    # -- pickling --------------------------------------------------------
    # The skorch net is rebuilt when needed; pickles hold the networks as
    # config + numpy arrays (no torch.save bytes, so they load without CUDA
    # and run no inner pickle), the history and, only when keep_optimizer is
    # set, the optimizer's state.

    def __getstate__(self):
        from .backbones.state import pack_modules, to_plain

        # A copy: BaseEstimator may hand back the live __dict__.
        state = dict(super().__getstate__())
        net = state.pop("net_", None)
        if net is not None and self.keep_optimizer:
            state["_optimizer_state"] = net.optimizer_.state_dict()
        elif not self.keep_optimizer:
            state.pop("_optimizer_state", None)
        if state.get("_optimizer_state") is not None:
            # Tensors as numpy arrays, the rest plain values: no torch.save bytes.
            state["_optimizer_state"] = to_plain(state["_optimizer_state"])
        # The head, the penalty and a module given as ``backbone`` travel as
        # config + arrays (backbone_ handles itself: Backbone.__getstate__).
        return pack_modules(state, ("head_", "l2sp_", "backbone"))

    def __setstate__(self, state):
        from .backbones.state import from_plain, unpack_modules

        state = unpack_modules(state)
        if state.get("_optimizer_state") is not None:
            state["_optimizer_state"] = from_plain(state["_optimizer_state"])
        super().__setstate__(state)

    # -- parameters and data ---------------------------------------------

    def _check_params(self):
        check_head(self.head, self.dropout)
        check_freeze(self.freeze)
        _check_number("freeze_epochs", self.freeze_epochs, integer=True, minimum=0)
        if self.lr is not None:
            _check_number("lr", self.lr, minimum=0, strict=True, hint="or None")
        _check_number("backbone_lr_mult", self.backbone_lr_mult, minimum=0, strict=True)
        _check_number("weight_decay", self.weight_decay, minimum=0)
        _check_number("l2sp", self.l2sp, minimum=0)
        if self.max_epochs is not None:
            _check_number("max_epochs", self.max_epochs, integer=True, minimum=1,
                          hint="or None")
        _check_number("batch_size", self.batch_size, integer=True, minimum=1)
        _check_number("num_workers", self.num_workers, integer=True, minimum=0)
        _check_number("verbose", int(self.verbose) if isinstance(self.verbose, bool)
                      else self.verbose, integer=True, minimum=0)
        if self.image_size is not None:
            _check_number("image_size", self.image_size, integer=True, minimum=1)
        resolve_optimizer(self.optimizer)
        check_schedule(self.schedule)
        if self._patience() is not None:
            if not (isinstance(self.validation_fraction, numbers.Real)
                    and 0 < self.validation_fraction < 1):
                raise ValueError(f"validation_fraction must be in (0, 1); got "
                                 f"{self.validation_fraction!r}")
        if not isinstance(self.augment, (bool, np.bool_)):
            raise ValueError(f"augment must be True or False; got {self.augment!r}")
        if self.callbacks is not None and not isinstance(self.callbacks, (list, tuple)):
            raise ValueError(f"callbacks must be a list of skorch callbacks; got "
                             f"{type(self.callbacks).__name__}")
        device = resolve_device(self.device)
        resolve_precision(self.precision, device)
        if not (self.distributed == "auto" or isinstance(self.distributed, (bool, np.bool_))):
            raise ValueError(f"distributed must be 'auto', True or False; got "
                             f"{self.distributed!r}")
        if not isinstance(self.sync_batchnorm, (bool, np.bool_)):
            raise ValueError(f"sync_batchnorm must be True or False; got "
                             f"{self.sync_batchnorm!r}")

    def _patience(self):
        """The early-stopping patience in epochs, or None without early stopping."""
        if isinstance(self.early_stopping, (bool, np.bool_)):
            return DEFAULT_PATIENCE if self.early_stopping else None
        if self.early_stopping is None:
            return None
        _check_number("early_stopping", self.early_stopping, integer=True, minimum=1,
                      hint="a patience in epochs, True for a patience of "
                           f"{DEFAULT_PATIENCE}, or None to train without holding data out")
        return int(self.early_stopping)

    def _samples(self, X, reset, target=None):
        return estimator_samples(self, X, self.backbone_, reset=reset, y=target)

    def _split(self, samples):
        """Training and validation rows (validation only with early stopping)."""
        if self._patience() is None:
            return samples, None
        n = len(samples)
        n_valid = max(1, int(round(self.validation_fraction * n)))
        if n - n_valid < 1:
            raise ValueError(f"early_stopping holds out validation_fraction="
                             f"{self.validation_fraction} of the data, which leaves no "
                             f"training sample out of {n}; give more samples or set "
                             "early_stopping=None.")
        stratify = self._stratify(samples.y, n_valid)
        seed = int(torch.randint(0, 2**31 - 1, ()).item())  # drawn from the seeded RNG
        train_idx, valid_idx = train_test_split(np.arange(n), test_size=n_valid,
                                                random_state=seed, stratify=stratify)
        return Rows(samples, np.sort(train_idx)), Rows(samples, np.sort(valid_idx))

    def _stratify(self, target, n_valid):
        return None

    # -- building and training -------------------------------------------

    def _start(self, X, target, random_state):
        """Load the backbone and build the head and the penalty.

        The backbone is loaded in a seeded block of its own: building a
        network draws random initial values even when pretrained weights
        replace them, and only a cache miss builds one, so drawing them from
        the training stream would make the first fit in a process differ
        from later ones. The head and the penalty are drawn from a fresh
        stream seeded by ``random_state`` (the training call's: rank 0's
        seed in a data-parallel fit).
        """
        # A new fit starts from nothing: no history, optimizer state or head
        # of an earlier fit carries over.
        for name in ("net_", "_optimizer_state", "history_", "head_", "l2sp_", "backbone_"):
            self.__dict__.pop(name, None)
        # The objective of this fit; a partial_fit continues with it even if
        # the parameter changed since (parameters take effect at fit).
        self._fitted_objective = self._objective()
        # Read from disk once per process (a search fits many clones); each fit
        # trains its own private copy. A random init still follows the seed.
        with seeded(random_state):
            backbone = load_backbone_cached(self.backbone, self.weights,
                                            image_size=self.image_size,
                                            random_state=random_state)
        if self.augment and backbone.modality != "image":
            raise ValueError(f"augment=True applies to image backbones; {backbone.spec} "
                             f"takes {backbone.modality} input. Use augment=False.")
        n_frozen_groups(self.freeze, backbone.param_groups)
        self.backbone_ = backbone
        samples = self._samples(X, reset=True, target=target)
        with seeded(random_state):
            self.n_features_out_ = self._embedding_width(samples)
            self.l2sp_ = L2SP(self.l2sp, backbone.module) if self.l2sp > 0 else None
            self.head_ = make_head(self.n_features_out_, self._n_outputs(), self.head,
                                   self.dropout)
        return samples

    def _embedding_width(self, samples):
        if self.backbone_.out_dim is not None:
            return int(self.backbone_.out_dim)
        # One forward pass over two samples tells the width, and initializes
        # lazy layers (under the fit's seed) before the optimizer sees them.
        module = self.backbone_.module
        n = min(2, len(samples))
        inputs, _ = Collate(self.backbone_.preprocess)(samples.__getitems__(np.arange(n)))
        was_training = module.training
        module.eval()
        with torch.no_grad():
            width = module(inputs).reshape(n, -1).shape[1]
        module.train(was_training)
        return int(width)

    def _model(self):
        return BackboneWithHead(self.backbone_.module, self.head_)

    def _objective(self):
        """The training objective: the classifier's ``objective`` parameter."""
        return "cross_entropy"

    def _contrastive(self):
        return getattr(self, "_fitted_objective", self._objective()) == "contrastive"

    def _lr(self):
        """``lr``, or the default for how this training starts (see ``DEFAULT_LR``)."""
        if self.lr is not None:
            return self.lr
        if self._contrastive():
            return DEFAULT_LR["contrastive"]
        return DEFAULT_LR["fitted_head" if self.freeze_epochs > 0 else "new_head"]

    def _max_epochs(self):
        """``max_epochs``, or the default of the objective (see ``DEFAULT_MAX_EPOCHS``)."""
        if self.max_epochs is not None:
            return self.max_epochs
        return DEFAULT_MAX_EPOCHS["contrastive" if self._contrastive() else "cross_entropy"]

    def _fit_model(self, train, valid, epochs, first):
        """Train for ``epochs`` with the objective; ``first``: the model's first training call.

        Cross-entropy: the network trains end to end (after the head is fitted
        to convergence on frozen embeddings when ``freeze_epochs > 0``).
        Contrastive: the backbone trains on pairs drawn from the labels, then
        the head is fitted to convergence on the new embeddings.
        """
        if not self._contrastive():
            if first and self.freeze_epochs > 0:
                self._fit_head_to_convergence(train)
            self._train(train, valid, epochs)
            return
        groups = self.backbone_.param_groups
        if n_frozen_groups(self.freeze, groups) >= len(groups):
            raise ValueError(f"objective='contrastive' trains the backbone, but freeze="
                             f"{self.freeze!r} freezes all of it; freeze fewer groups, or use "
                             "objective='cross_entropy' for a linear probe.")
        self._train(self._pairs(train), self._pairs(valid), epochs)
        self._fit_head_to_convergence(train)
        group = getattr(self, "_group", None)
        if group is not None:
            # Every rank fitted the head on the same embeddings; on GPUs,
            # non-deterministic kernels could still leave them a rounding apart.
            group.broadcast_module(self.head_)

    def _pairs(self, rows):
        """Pairs of ``rows`` for the contrastive objective, drawn from the seeded stream."""
        if rows is None:
            return None
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        return PairRows(rows, _targets_of(rows), self.n_pairs, seed)

    def _fit_head_to_convergence(self, rows):
        """Fit ``head_`` on the backbone's embeddings of ``rows`` (no augmentation)."""
        plain = rows.samples.subset(rows.indices) if isinstance(rows, Rows) else rows
        embeddings = self._predict(self.backbone_.module, Samples(plain.data, plain.kind))
        fit_head(self.head_, embeddings, _targets_of(rows), self._criterion())

    def _build_net(self):
        backbone = self.backbone_
        # Contrastive training puts CosinePairs where the head goes: the
        # backbone learns from pair similarities and the real head is fitted
        # afterwards, so there is no head-only phase and no accuracy to score.
        contrastive = self._contrastive()
        device = resolve_device(self.device)
        optimizer, optimizer_kwargs = resolve_optimizer(self.optimizer)
        groups = partial(param_groups, backbone_groups=backbone.param_groups, lr=self._lr(),
                         backbone_lr_mult=self.backbone_lr_mult,
                         weight_decay=self.weight_decay)
        collate = Collate(backbone.preprocess)
        loader = {"collate_fn": collate, "num_workers": self.num_workers,
                  "pin_memory": device.type == "cuda",
                  "persistent_workers": self.num_workers > 0}
        callbacks = [
            ("freeze", FreezeSchedule(backbone.param_groups,
                                      n_frozen_groups(self.freeze, backbone.param_groups),
                                      0 if contrastive else self.freeze_epochs)),
            ("lr_schedule", LRSchedule(self.schedule)),
        ]
        if self._patience() is not None:
            callbacks.append(("early_stopping", ValidatedEarlyStopping(
                monitor="valid_loss", patience=self._patience(), load_best=True)))
        group = getattr(self, "_group", None)
        # In a data-parallel fit, rank 0 alone prints the table and the bar.
        verbose = int(self.verbose) if is_main_process() else 0
        if verbose >= 2:
            callbacks.append(("progress_bar", ProgressBar()))
        callbacks += copy.deepcopy(list(self.callbacks or []))
        net = FineTuningNet(
            BackboneWithHead(backbone.module, CosinePairs()) if contrastive else self._model(),
            torch.nn.MSELoss() if contrastive else self._criterion(),
            optimizer_groups=groups, penalty=self.l2sp_,
            augment=FlipAndResizedCrop() if self.augment else None,
            amp_dtype=resolve_precision(self.precision, device),
            score=None if contrastive else self._score_name,
            group=group, sync_batchnorm=bool(self.sync_batchnorm),
            optimizer=optimizer, lr=self._lr(), max_epochs=self._max_epochs(),
            batch_size=self.batch_size, train_split=None, callbacks=callbacks,
            verbose=verbose, device=str(device),
            **{f"iterator_train__{k}": v for k, v in loader.items()},
            **{f"iterator_valid__{k}": v for k, v in loader.items()},
            **{f"optimizer__{k}": v for k, v in optimizer_kwargs.items()},
        )
        net.initialize()
        if getattr(self, "history_", None) is not None:
            net.history_ = self.history_
        if getattr(self, "_optimizer_state", None) is not None:
            net.optimizer_.load_state_dict(self.__dict__.pop("_optimizer_state"))
        self.net_ = net
        self.history_ = net.history_
        return net

    def _train(self, train, valid, epochs):
        net = getattr(self, "net_", None)
        if net is None:
            net = self._build_net()
        net.max_epochs = epochs
        group = net.group = getattr(self, "_group", None)
        if group is not None and len(train) < group.world_size:
            raise ValueError(f"{len(train)} training samples cannot be shared among the "
                             f"{group.world_size} processes of this distributed fit; give at "
                             "least one sample per process, or use distributed=False.")
        # BatchNorm fails on a training batch of one sample: drop such a last
        # batch, and refuse up front where every batch would be that small.
        # (In a data-parallel fit each rank's batches come from its shard.)
        n_train = shard_size(len(train), group)
        net.iterator_train__drop_last = bool(n_train % self.batch_size == 1
                                             and n_train > self.batch_size)
        if self.batch_size == 1 or n_train == 1:
            self._check_single_sample_batches(net, train)
        net.train_split = predefined_split(valid) if valid is not None else None
        # Shuffling and worker seeds come from their own seed, drawn from the
        # training stream: the same model whatever num_workers is.
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        net.iterator_train__sampler = SeededShuffle(
            len(train), seed, numbered_epochs=isinstance(train, PairRows),
            rank=0 if group is None else group.rank,
            world_size=1 if group is None else group.world_size)
        net.iterator_train__generator = torch.Generator().manual_seed(seed)
        net.iterator_valid__sampler = None if group is None or valid is None else Shard(
            len(valid), group.rank, group.world_size)
        if group is not None:
            # Every rank shares the seed; dropout and augmentation draws
            # should still differ between the ranks' samples.
            torch.manual_seed(seed + 1 + group.rank)
        try:
            net.partial_fit(train)
        finally:
            # The net keeps no reference to the data or the process group
            # (net_.predict sees all rows), and the fitted weights leave the
            # accelerator, trainable again and in evaluation mode.
            net.train_split = None
            net.group = None
            net.iterator_valid__sampler = None
            unfreeze_all(net.module_)
            net.module_.eval()
            net.release_training_state(keep_optimizer=self.keep_optimizer)
        if net.interrupted_:
            # skorch swallows the interrupt; the user asked to stop, so the
            # caller (a script, a GridSearchCV) must stop too.
            raise KeyboardInterrupt(
                f"training interrupted in epoch {len(self.history_)}; "
                f"{type(self).__name__} keeps the weights trained so far")

    def _check_single_sample_batches(self, net, train):
        """Raise a ValueError where a BatchNorm layer would train on one value per channel."""
        inputs, _ = Collate(self.backbone_.preprocess)(train.__getitems__(np.arange(1)))
        n_frozen = n_frozen_groups(self.freeze, self.backbone_.param_groups)
        norms = norms_needing_two_samples(net.module_, self.backbone_.param_groups, n_frozen,
                                          inputs)
        if not norms:
            return
        if self.batch_size == 1:
            cause, fix = ("batch_size=1 gives", "use batch_size >= 2")
        else:
            held = (f" after holding out validation_fraction={self.validation_fraction} "
                    "for early stopping" if self._patience() is not None else "")
            cause = f"1 training sample{held} gives"
            fix = ("give more samples" + (", a smaller validation_fraction or "
                                          "early_stopping=None" if held else ""))
        raise ValueError(
            f"{cause} training batches of one sample, and the BatchNorm layers {norms} "
            f"cannot train on a single value per channel; {fix}, or freeze those layers "
            "(frozen BatchNorm layers stay in evaluation mode).")

    def _predict(self, module, samples, output=None):
        device = resolve_device(self.device)
        return predict_batches(module, samples, self.backbone_.preprocess,
                               batch_size=self.batch_size, device=device,
                               amp_dtype=resolve_precision(self.precision, device),
                               num_workers=self.num_workers, output=output,
                               verbose=self.verbose >= 2 and is_main_process())


class FineTunedClassifier(ClassifierMixin, _FineTuned):
    __doc__ = f"""Fine-tune a pretrained backbone with a new classification head.

    Parameter transfer: the backbone's pretrained weights are the starting
    point, a new head maps its embedding to the classes, and the network is
    trained with cross-entropy. Labels may be strings or any integers, binary
    or multiclass.

    Parameters
    ----------{_PARAMS_DOC}
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes in the loss: ``{{label: weight}}``, or
        ``"balanced"`` for weights inversely proportional to class frequencies.
    objective : {{"cross_entropy", "contrastive"}}, default="cross_entropy"
        ``"cross_entropy"``: the network (backbone and head) trains end to end
        on the classification loss. ``"contrastive"`` (SetFit's recipe, for
        few labels): the backbone trains on pairs of samples drawn from the
        labels, pulling the embeddings of a same-class pair together (cosine
        similarity towards 1) and pushing other pairs apart (towards 0), with
        the mean squared error of the cosine similarity as the loss; then the
        head is fitted to convergence on the new embeddings (see
        ``freeze_epochs``). ``max_epochs``, ``lr``, ``backbone_lr_mult``,
        ``freeze`` (not all of the backbone), ``l2sp``, ``augment`` (two
        independent views per pair), ``early_stopping`` (on pairs of the
        held-out samples) apply to the pair training; ``freeze_epochs`` does
        not (there is no head in it); ``history_`` records the pair loss.
        ``transform`` gives the contrastively tuned embeddings. Its defaults
        (``lr=2e-4``, ``max_epochs=3``, ``n_pairs=8``) were chosen from a sweep
        on all-MiniLM-L6-v2 with short reviews at 8 labels per class (user
        guide, "Few labels"; ``benchmarks/bench_fewshot.py``): accuracy 0.698
        against 0.650 for frozen embeddings + ``LogisticRegression`` over 8
        draws (7 won, 1 tied), where ``lr=1e-3`` lost ground with every epoch
        and 2e-5 to 5e-5 barely moved the backbone. On a CNN after a domain
        shift (clean to noisy digits) it tied the frozen features.
    n_pairs : int, default={N_PAIRS}
        With ``objective="contrastive"``: pairs per training sample and
        epoch, half of the same class and half not, drawn afresh every epoch
        (a sample meets ``n_pairs * max_epochs`` partners; the pairs grow
        linearly with the samples, not quadratically). What counts is the
        number of steps: 3 epochs of 8 pairs did as well as 10 epochs of 2.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The labels, in the order of :meth:`predict_proba`'s columns.{_ATTRIBUTES_DOC}

    See Also
    --------
    FineTunedRegressor : the same for regression targets.
    PretrainedFeatureTransformer : a frozen backbone as a feature extractor.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sktransfer import FineTunedClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = rng.rand(40, 4).astype(np.float32)
    >>> y = np.where(X[:, 0] > 0.5, "big", "small")
    >>> clf = FineTunedClassifier(nn.Sequential(nn.Linear(4, 16), nn.ReLU()), lr=0.05,
    ...                           max_epochs=20, random_state=0).fit(X, y)
    >>> clf.classes_
    array(['big', 'small'], dtype='<U5')
    >>> clf.predict_proba(X[:2]).shape
    (2, 2)
    >>> clf.score(X, y) > 0.8
    True
    """

    _score_name = "accuracy"

    def __init__(self, backbone="torchvision:resnet18", weights="DEFAULT", head=None, dropout=0.0,
                 freeze="none", freeze_epochs=0, lr=None, backbone_lr_mult=1.0,
                 weight_decay=0.01, optimizer="adamw", schedule="onecycle", l2sp=0.0,
                 max_epochs=None, batch_size=32, early_stopping=None, validation_fraction=0.1,
                 augment=False, class_weight=None, device="auto", precision="auto",
                 num_workers=0, image_size=None, random_state=None, verbose=0, callbacks=None,
                 keep_optimizer=False, objective="cross_entropy", n_pairs=N_PAIRS,
                 distributed="auto", sync_batchnorm=False):
        super().__init__(
            backbone=backbone, weights=weights, head=head, dropout=dropout, freeze=freeze,
            freeze_epochs=freeze_epochs, lr=lr, backbone_lr_mult=backbone_lr_mult,
            weight_decay=weight_decay, optimizer=optimizer, schedule=schedule, l2sp=l2sp,
            max_epochs=max_epochs, batch_size=batch_size, early_stopping=early_stopping,
            validation_fraction=validation_fraction, augment=augment, device=device,
            precision=precision, num_workers=num_workers, image_size=image_size,
            random_state=random_state, verbose=verbose, callbacks=callbacks,
            keep_optimizer=keep_optimizer, distributed=distributed,
            sync_batchnorm=sync_batchnorm)
        self.class_weight = class_weight
        self.objective = objective
        self.n_pairs = n_pairs

    def _objective(self):
        return self.objective

    def _check_params(self):
        super()._check_params()
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}; got {self.objective!r}")
        _check_number("n_pairs", self.n_pairs, integer=True, minimum=1)

    def partial_fit(self, X, y, classes=None):
        """Train one more epoch over ``(X, y)``; the first call also builds the model.

        Training continues from the current weights and optimizer state (and
        the epoch count of ``freeze_epochs``); ``early_stopping`` does not
        apply, every sample given trains. Hyperparameters set after the first
        fit take effect at the next :meth:`fit`. With
        ``objective="contrastive"``, the epoch trains the backbone on pairs of
        the samples given, and the head is then refitted on them.

        Parameters
        ----------
        X : array-like, list of paths, PIL images or strings
        y : array-like of shape (n_samples,)
        classes : array-like, optional
            All the labels, needed on the first call when this batch does not
            hold every class.

        Returns
        -------
        self
        """
        if classes is not None and not self.__sklearn_is_fitted__():
            self._all_classes = np.unique(np.asarray(classes))
        try:
            return self._partial_fit(X, y)
        finally:
            self.__dict__.pop("_all_classes", None)

    def predict_proba(self, X):
        """Class probabilities, columns in the order of ``classes_``.

        Parameters
        ----------
        X : array-like, list of paths, PIL images or strings

        Returns
        -------
        ndarray of shape (n_samples, n_classes), float32
        """
        check_is_fitted(self)
        samples = self._samples(X, reset=False)
        return self._predict(self._model(), samples, output=lambda out, _: out.float().softmax(1))

    def predict(self, X):
        """Predicted labels.

        Parameters
        ----------
        X : array-like, list of paths, PIL images or strings

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]

    def _check_y(self, y, reset):
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the "
                             "target y is None.")
        y = check_array(y, ensure_2d=False, dtype=None, input_name="y")
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if reset:
            classes = getattr(self, "_all_classes", None)
            classes = np.unique(y) if classes is None else classes
            if len(classes) < 2:
                raise ValueError(f"y has only one class ({classes[0]!r}); a classifier needs "
                                 "samples of at least 2 classes.")
            unknown = np.setdiff1d(y, classes)
            if unknown.size:
                raise ValueError(f"y has labels {unknown.tolist()} that are not in classes")
            self.classes_ = classes
            self._class_weights = self._weights_of_classes(y)
        else:
            unknown = np.setdiff1d(y, self.classes_)
            if unknown.size:
                raise ValueError(f"y has labels {unknown.tolist()} that were not seen in the "
                                 f"first fit; the classes are {self.classes_.tolist()}")
        return np.searchsorted(self.classes_, y).astype(np.int64)

    def _weights_of_classes(self, y):
        if self.class_weight is None:
            return None
        if not (self.class_weight == "balanced" or isinstance(self.class_weight, dict)):
            raise ValueError(f"class_weight must be None, 'balanced' or a dict of "
                             f"{{label: weight}}; got {self.class_weight!r}")
        full = np.ones(len(self.classes_))
        if isinstance(self.class_weight, dict):
            unknown = [label for label in self.class_weight if label not in set(self.classes_)]
            if unknown:
                raise ValueError(f"class_weight names labels {unknown} that are not classes; "
                                 f"the classes are {self.classes_.tolist()}")
            for label, weight in self.class_weight.items():
                full[np.searchsorted(self.classes_, label)] = weight
        else:
            present = np.unique(y)
            full[np.searchsorted(self.classes_, present)] = compute_class_weight(
                "balanced", classes=present, y=y)
        return full.astype(np.float32)

    def _n_outputs(self):
        return len(self.classes_)

    def _criterion(self):
        weights = getattr(self, "_class_weights", None)
        return torch.nn.CrossEntropyLoss(
            weight=None if weights is None else torch.from_numpy(weights))

    def _stratify(self, target, n_valid):
        counts = np.bincount(target)
        counts = counts[counts > 0]
        if counts.min() >= 2 and n_valid >= len(counts) and len(target) - n_valid >= len(counts):
            return np.asarray(target)
        return None


class FineTunedRegressor(RegressorMixin, _FineTuned):
    __doc__ = f"""Fine-tune a pretrained backbone with a new regression head.

    Parameter transfer with a mean squared error loss. ``y`` may be 1-D or
    2-D (several targets); targets are standardized for training (so the
    learning rate does not depend on their scale) and predictions are mapped
    back, so losses in ``history_`` are on the standardized scale.

    Parameters
    ----------{_PARAMS_DOC}

    Attributes
    ----------
    n_outputs_ : int
        Number of targets.{_ATTRIBUTES_DOC}

    See Also
    --------
    FineTunedClassifier : the same for class labels.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sktransfer import FineTunedRegressor
    >>> rng = np.random.RandomState(0)
    >>> X = rng.rand(64, 3).astype(np.float32)
    >>> y = 100 * X[:, 0] + 50
    >>> reg = FineTunedRegressor(nn.Sequential(nn.Linear(3, 16), nn.ReLU()), lr=0.05,
    ...                          max_epochs=30, random_state=0).fit(X, y)
    >>> reg.predict(X[:3]).shape
    (3,)
    >>> reg.score(X, y) > 0.8
    True
    """

    _score_name = "r2"

    def partial_fit(self, X, y):
        """Train one more epoch over ``(X, y)``; the first call also builds the model.

        Training continues from the current weights and optimizer state;
        ``early_stopping`` does not apply, every sample given trains. The
        target scaling is set by the first call.

        Parameters
        ----------
        X : array-like, list of paths, PIL images or strings
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)

        Returns
        -------
        self
        """
        return self._partial_fit(X, y)

    def predict(self, X):
        """Predicted targets, shaped like the ``y`` given to ``fit``.

        Parameters
        ----------
        X : array-like, list of paths, PIL images or strings

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_outputs), float64
        """
        check_is_fitted(self)
        samples = self._samples(X, reset=False)
        scaled = self._predict(self._model(), samples).astype(np.float64)
        pred = scaled * self._y_scale + self._y_mean
        return pred.ravel() if self._y_1d else pred

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _check_y(self, y, reset):
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the "
                             "target y is None.")
        y = check_array(y, ensure_2d=False, dtype=np.float64, input_name="y")
        if y.ndim not in (1, 2) or (y.ndim == 2 and y.shape[1] == 0):
            raise ValueError(f"y must have shape (n_samples,) or (n_samples, n_outputs); got "
                             f"{y.shape}")
        y2d = y.reshape(len(y), -1)
        if reset:
            self._y_1d = y.ndim == 1
            self.n_outputs_ = y2d.shape[1]
            self._y_mean = y2d.mean(axis=0)
            std = y2d.std(axis=0)
            self._y_scale = np.where(std > 0, std, 1.0)
        elif y2d.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {y2d.shape[1]} targets, but the model was fitted with "
                             f"{self.n_outputs_}")
        scaled = ((y2d - self._y_mean) / self._y_scale).astype(np.float32)
        return scaled

    def _n_outputs(self):
        return self.n_outputs_

    def _criterion(self):
        return torch.nn.MSELoss()


def _targets_of(rows):
    """The targets of a :class:`Samples` or of :class:`Rows` of one."""
    if isinstance(rows, Rows):
        return rows.samples.y[rows.indices]
    return rows.y


def _check_number(name, value, *, integer=False, minimum=None, strict=False, hint=None):
    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, (bool, np.bool_))
    ok = ok and np.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        what = "an integer" if integer else "a number"
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum}"
        raise ValueError(f"{name} must be {what}{bound}" + (f" ({hint})" if hint else "")
                         + f"; got {value!r}")

"""What FineTunedClassifier and FineTunedRegressor share: everything but the target.

The estimator contract lives here: ``__init__`` stores, ``fit`` validates
the parameters (``_parameter_constraints``), loads the backbone, builds the
head and the penalty, hands the training to :mod:`sktransfer.training` as a
:class:`~sktransfer.training.plan.TrainingPlan` (the training never sees the
estimator) and keeps the net and history it returns; ``transform`` embeds
with the fine-tuned backbone.
"""

import contextlib
import numbers
from functools import partial

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import TransformerTags

from .._utils.device import resolve_device
from .._utils.launch import is_main_process
from .._utils.seeding import seed_from, seeded
from .._utils.signature import positional_deprecated
from .._utils.validation import (BACKBONE_CONSTRAINTS, AnyOf, Boolean, Checked, InstanceOf,
                                Interval, Options, validate_params)
from ..backbones import attach_adapter, check_adapter, load_backbone_cached
from ..chaining import KeepsTrainedBackbone
from ..engine.resident import ENGINE_CONSTRAINTS, FIT_PROBE, ServesFromEngine, features_agree
from ..feature_cache import snapshots_key
from ..inference import predict_batches
from ..inputs import estimator_samples, split_domains
from ..training.distributed import shared_random_state, training_group
from ..training.freezing import FREEZE_RULE, auto_frozen, n_frozen_groups
from ..training.adaptation import ADAPTATIONS
from ..training.heads import BackboneWithHead, check_head, embedding_width, make_head
from ..training.l2sp import L2SP
from ..training.holdout import holdout_split
from ..training.optimization import SCHEDULES, resolve_optimizer
from ..training.plan import TrainingPlan
from ..training.run import TrainingRun
from ..training.weights import check_sample_weight, training_data_digest, with_weights
from .embedding import EmbedsWithBackbone
from .state import PicklesPlainly

#: The training objectives of FineTunedClassifier.
OBJECTIVES = ("cross_entropy", "contrastive")

#: Pairs per sample and epoch of objective="contrastive" (see FineTunedClassifier).
N_PAIRS = 8

#: ``lr=None``: the rate for a head trained from random weights, for fine-tuning
#: from a head fitted first (freeze_epochs > 0), and for contrastive training.
#: Measured at 8 labels per class (benchmarks/bench_fewshot.py). With an
#: ``adapter``: the rate commonly used for LoRA, not yet measured here.
DEFAULT_LR = {"new_head": 1e-3, "fitted_head": 1e-4, "contrastive": 2e-4, "adapter": 1e-2}

#: ``max_epochs=None``: the epochs of each objective.
DEFAULT_MAX_EPOCHS = {"cross_entropy": 10, "contrastive": 3}

#: The patience of ``early_stopping=True``: a few epochs of a noisy validation
#: loss on small data sets, without paying for many epochs past the best one.
DEFAULT_PATIENCE = 5


class _FineTuned(EmbedsWithBackbone, PicklesPlainly, KeepsTrainedBackbone, ServesFromEngine,
                 ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """What the classifier and the regressor share: everything but the target."""

    _score_name = None  # "accuracy" or "r2": the validation score recorded per epoch

    #: What each parameter takes, checked at fit (see sktransfer._utils.validation).
    _parameter_constraints = {
        **BACKBONE_CONSTRAINTS,
        # None has always meant "auto" here (not in the transformer).
        "device": [None, *BACKBONE_CONSTRAINTS["device"]],
        "head": [None, Checked(check_head)],
        "dropout": AnyOf(Interval(numbers.Real, 0, 1), description="a probability in [0, 1)"),
        "freeze": FREEZE_RULE,
        "freeze_epochs": [Interval(numbers.Integral, 0)],
        "lr": [Interval(numbers.Real, 0, closed="neither"), None],
        "backbone_lr_mult": [Interval(numbers.Real, 0, closed="neither")],
        "weight_decay": [Interval(numbers.Real, 0)],
        "optimizer": [Checked(resolve_optimizer)],
        "schedule": [Options(SCHEDULES)],
        "l2sp": [Interval(numbers.Real, 0)],
        "max_epochs": [Interval(numbers.Integral, 1), None],
        "early_stopping": AnyOf(
            Interval(numbers.Integral, 1), Boolean(), None,
            description=f"an integer >= 1 (a patience in epochs, True for a patience of "
                        f"{DEFAULT_PATIENCE}, or None to train without holding data out)"),
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="neither")],
        "augment": [Boolean()],
        "callbacks": [None, InstanceOf((list, tuple), "a list of skorch callbacks")],
        "keep_optimizer": [Boolean()],
        "distributed": [Options(("auto",)), Boolean()],
        "sync_batchnorm": [Boolean()],
        "adaptation": [None, Options(ADAPTATIONS)],
        "adaptation_weight": [None, Interval(numbers.Real, 0)],
        "gradient_accumulation_steps": [Interval(numbers.Integral, 1)],
        "gradient_checkpointing": [Boolean()],
        "adapter": [None, Checked(check_adapter)],
        **ENGINE_CONSTRAINTS,
    }

    @positional_deprecated
    def __init__(self, backbone="torchvision:resnet18", *, weights="DEFAULT", head=None,
                 dropout=0.0, freeze="auto", freeze_epochs=0, lr=None, backbone_lr_mult=1.0,
                 weight_decay=0.01, optimizer="adamw", schedule="onecycle", l2sp=0.0,
                 max_epochs=None, batch_size=32, early_stopping=None, validation_fraction=0.1,
                 augment=False, device="auto", precision="auto", num_workers=0, image_size=None,
                 prompt=None, random_state=None, verbose=0, callbacks=None, keep_optimizer=False,
                 distributed="auto", sync_batchnorm=False, runtime="torch", quantize=None,
                 sampling_rate=None, max_duration="auto", adaptation=None,
                 adaptation_weight=None, gradient_accumulation_steps=1,
                 gradient_checkpointing=False, adapter=None):
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
        self.prompt = prompt
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks
        self.keep_optimizer = keep_optimizer
        self.distributed = distributed
        self.sync_batchnorm = sync_batchnorm
        self.runtime = runtime
        self.quantize = quantize
        self.sampling_rate = sampling_rate
        self.max_duration = max_duration
        self.adaptation = adaptation
        self.adaptation_weight = adaptation_weight
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.gradient_checkpointing = gradient_checkpointing
        self.adapter = adapter

    # -- public API ------------------------------------------------------

    def fit(self, X, y, sample_domain=None, sample_weight=None):
        """Load the backbone, put a new head on it and train for ``max_epochs``.

        Parameters
        ----------
        X : array-like, list of paths, PIL images or strings
            Samples of the kind the backbone takes.
        y : array-like
            Targets. With ``adaptation`` (or ``sample_domain``) set, ``-1``
            (classification) or NaN (regression) marks a target sample
            without a label (skada's convention).
        sample_domain : array-like of int, optional
            Positive for source samples, negative for target samples. When
            None, the unlabelled rows are the target domain's. Routed by
            scikit-learn's metadata routing (``set_fit_request``). See
            :doc:`/adaptation`.
        sample_weight : array-like of shape (n_samples,), scalar or None, default=None
            Non-negative weights of the samples in the loss (a weighted mean
            over each batch, multiplied by ``class_weight`` where set; the
            scale does not matter), in the early-stopping validation scores
            and in a head fitted first. Routed by metadata routing
            (``set_fit_request(sample_weight=True)``). The weights of
            unlabelled target samples are ignored. See the user guide,
            "Weights and multilabel targets".

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
        validate_params(self, unused=self._unused_params())
        self._check_engine_params()
        self._check_target_kind(y, sample_domain)
        domains, y = split_domains(y, sample_domain, self._score_name == "r2",
                                   adaptation=self.adaptation, methods=ADAPTATIONS,
                                   name=type(self).__name__)
        weight = check_sample_weight(sample_weight, domains.n)
        if weight is not None and not weight[domains.labelled].any():
            raise ValueError("sample_weight is zero for every labelled sample: there is "
                             "nothing to train on")
        labelled_weight = None if weight is None else weight[domains.labelled]
        target = with_weights(domains.fill(self._check_y(y, reset=True,
                                                         sample_weight=labelled_weight)), weight)
        with self._training_group(target) as (group, random_state):
            samples = self._start(X, target, random_state)
            plan = self._training_plan()
            plan.check_adaptation()
            with seeded(random_state):
                train, valid = self._split(domains.labelled_samples(samples))
                self._train(plan, group, train, valid, plan.max_epochs, first=True,
                            target=domains.target_rows(samples))
        self._settle_engines(*self._fit_probe(X))
        return self

    def _partial_fit(self, X, y, sample_weight):
        first = not self.__sklearn_is_fitted__()
        if self.adaptation is not None:
            raise ValueError("partial_fit does not train the adaptation term (it sees no "
                             "target samples); use fit, or adaptation=None.")
        if first:
            validate_params(self, unused=self._unused_params())
            self._check_engine_params()
        if first:
            self._check_target_kind(y, None)
        weight = None if sample_weight is None or y is None else check_sample_weight(
            sample_weight, len(y))
        target = with_weights(self._check_y(y, reset=first, sample_weight=weight), weight)
        with self._training_group(target) as (group, random_state):
            if first:
                samples = self._start(X, target, random_state)
                with seeded(random_state):
                    self._train(self._training_plan(), group, samples, None, 1, first=True)
            else:
                samples = self._samples(X, reset=False, target=target)
                # A different seed per call: the same seed would repeat the same
                # shuffling and dropout masks every epoch.
                seed = None if random_state is None else (
                    seed_from(random_state) + len(self.history_)) % (2**31 - 1)
                with seeded(seed):
                    self._train(self._training_plan(), group, samples, None, 1, first=False)
        # The weights changed: an int8 network is calibrated anew, on this batch.
        self._calibrate_int8(*self._fit_probe(X))
        return self

    def _train(self, plan, group, train, valid, epochs, first, target=None):
        """Run one training call; keep its net and history, also when it stops midway
        (an interrupted fit keeps the weights trained so far: partial_fit continues)."""
        run = TrainingRun(plan, group, target, net=getattr(self, "net_", None))
        try:
            run.fit_model(train, valid, epochs, first)
        finally:
            trained = run.trained()
            if trained is not None:
                self.net_, self.history_ = trained.net, trained.history
                if trained.built:  # the new net took over a pickled optimizer state
                    self.__dict__.pop("_optimizer_state", None)

    @contextlib.contextmanager
    def _training_group(self, target):
        """Join the processes this training call runs over; yields ``(group, random_state)``.

        Outside a launch (or with ``distributed=False``) the group is None
        and ``random_state`` is the parameter. In a data-parallel fit, every
        rank checks that all were given the same targets and trains with
        rank 0's seed, so that the head's initialization, the validation
        split and the shuffling agree.
        """
        # Training changes the weights: the engines of the old ones go now,
        # not at the next prediction (on a GPU they hold its memory).
        self.release_engine()
        with training_group(self.distributed, resolve_device(self.device)) as group:
            if group is not None:
                # Parameters that change how a rank loads or prints, not
                # what it trains, may differ (verbose on rank 0 only).
                params = {k: v for k, v in self.get_params(deep=False).items()
                          if k not in ("verbose", "num_workers")}
                group.check_same_data(training_data_digest(target), params)
                if self.sync_batchnorm and group.device.type != "cuda":
                    raise ValueError(f"sync_batchnorm=True needs CUDA devices: PyTorch's "
                                     f"SyncBatchNorm does not run on {group.device.type}; "
                                     "use sync_batchnorm=False on the CPU.")
            yield group, shared_random_state(group, self.random_state)

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

    # -- parameters and data ---------------------------------------------

    def _unused_params(self):
        """Parameters this fit ignores: ``validation_fraction`` holds nothing out
        without early stopping, so any value (0, None) is left as it is."""
        stops = (bool(self.early_stopping) if isinstance(self.early_stopping, (bool, np.bool_))
                 else self.early_stopping is not None)
        return () if stops else ("validation_fraction",)

    def _patience(self):
        """The early-stopping patience in epochs, or None without early stopping."""
        if isinstance(self.early_stopping, (bool, np.bool_)):
            return DEFAULT_PATIENCE if self.early_stopping else None
        if self.early_stopping is None:
            return None
        return int(self.early_stopping)

    def _samples(self, X, reset, target=None):
        # getattr: models pickled before audio support have neither parameter.
        return estimator_samples(self, X, self.backbone_, reset=reset, y=target,
                                 sampling_rate=getattr(self, "sampling_rate", None),
                                 max_duration=getattr(self, "max_duration", "auto"))

    def _split(self, samples):
        """Training and validation rows (validation only with early stopping)."""
        if self._patience() is None:
            return samples, None
        return holdout_split(samples, self.validation_fraction, self._stratify)

    def _stratify(self, target, n_valid):
        """The labels to stratify the validation split by (classes), or None."""
        return None

    def _check_target_kind(self, y, sample_domain):
        """Refuse a kind of target this estimator's settings cannot train on (classifier)."""

    # -- building ----------------------------------------------------------

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
            # Under an adapter the pretrained weights never change: the fit's
            # network shares their memory with the cached one.
            backbone = load_backbone_cached(
                self.backbone, self.weights, image_size=self.image_size,
                random_state=random_state,
                share_parameters=getattr(self, "adapter", None) is not None)
        backbone.use_prompt(self.prompt)
        if self.augment and not backbone.takes_images:
            raise ValueError(f"augment=True applies to image backbones; {backbone.spec} "
                             f"takes {backbone.modality} input. Use augment=False.")
        if getattr(self, "adapter", None) is not None:
            # peft draws the adapter's initial values from torch's RNG: seeded,
            # so that the same random_state gives the same model.
            with seeded(random_state):
                self._attach_adapter(backbone)
        self._n_frozen(backbone)  # refuses a freeze the backbone has not the groups for
        self.backbone_ = backbone
        samples = self._samples(X, reset=True, target=target)
        with seeded(random_state):
            self.n_features_out_ = embedding_width(backbone, samples)
            self.l2sp_ = L2SP(self.l2sp, backbone=backbone.module) if self.l2sp > 0 else None
            self.head_ = make_head(self.n_features_out_, self._n_outputs(), self.head,
                                   self.dropout)
        return samples

    def _attach_adapter(self, backbone):
        """Put ``adapter``'s layers into the fit's backbone, refusing contradictions."""
        if self.freeze == "backbone":
            raise ValueError(f"adapter={self.adapter!r} trains adapter layers inside the "
                             "backbone, but freeze='backbone' freezes all of it; use "
                             "freeze='auto' (or a number of groups), or adapter=None for a "
                             "linear probe.")
        if self.l2sp > 0:
            raise ValueError(f"l2sp={self.l2sp} pulls the backbone's weights towards the "
                             "pretrained ones, which an adapter leaves untouched; use "
                             "l2sp=0 with an adapter.")
        attach_adapter(backbone, self.adapter)

    def _model(self):
        """The fitted network: the backbone's module with the head on it."""
        return BackboneWithHead(self.backbone_.module, self.head_)

    def _n_frozen(self, backbone):
        """The groups of ``backbone`` that ``freeze`` freezes (a ValueError where too few)."""
        return n_frozen_groups(self.freeze, backbone.param_groups, auto_frozen(backbone))

    def _training_plan(self):
        """This call's :class:`~sktransfer.training.plan.TrainingPlan`, from the parameters."""
        return TrainingPlan(
            backbone=self.backbone_, head=self.head_, embedding_width=self.n_features_out_,
            penalty=self.l2sp_, criterion=self._criterion, name=type(self).__name__,
            objective="contrastive" if self._contrastive() else "cross_entropy",
            n_pairs=getattr(self, "n_pairs", N_PAIRS),  # a regressor has no pairs
            score=self._validation_score(), adaptation=self.adaptation,
            adaptation_weight=self.adaptation_weight, freeze=self.freeze,
            n_frozen=self._n_frozen(self.backbone_), freeze_epochs=self.freeze_epochs,
            lr=self._lr(), backbone_lr_mult=self.backbone_lr_mult,
            weight_decay=self.weight_decay, optimizer=self.optimizer, schedule=self.schedule,
            augment=self.augment, max_epochs=self._max_epochs(), batch_size=self.batch_size,
            patience=self._patience(), validation_fraction=self.validation_fraction,
            callbacks=tuple(self.callbacks or ()), verbose=self.verbose,
            num_workers=self.num_workers, device=self.device, precision=self.precision,
            sync_batchnorm=self.sync_batchnorm, keep_optimizer=self.keep_optimizer,
            history=getattr(self, "history_", None),
            optimizer_state=self.__dict__.get("_optimizer_state"),
            embed=partial(self._predict, "transform", resident=False),
            # getattr: models pickled before these parameters existed.
            accumulation_steps=getattr(self, "gradient_accumulation_steps", 1),
            checkpointing=getattr(self, "gradient_checkpointing", False))

    def _validation_score(self):
        """The score recorded per epoch on held-out samples (see ``TrainingPlan.score``)."""
        return self._score_name

    def _objective(self):
        """The training objective: the classifier's ``objective`` parameter."""
        return "cross_entropy"

    def _contrastive(self):
        return getattr(self, "_fitted_objective", self._objective()) == "contrastive"

    def _lr(self):
        """``lr``, or the default for how this training starts (see ``DEFAULT_LR``)."""
        if self.lr is not None:
            return self.lr
        # An adapter's few parameters want a larger rate, whatever the objective.
        if getattr(self, "adapter", None) is not None:
            return DEFAULT_LR["adapter"]
        if self._contrastive():
            return DEFAULT_LR["contrastive"]
        return DEFAULT_LR["fitted_head" if self.freeze_epochs > 0 else "new_head"]

    def _max_epochs(self):
        """``max_epochs``, or the default of the objective (see ``DEFAULT_MAX_EPOCHS``)."""
        if self.max_epochs is not None:
            return self.max_epochs
        return DEFAULT_MAX_EPOCHS["contrastive" if self._contrastive() else "cross_entropy"]

    def _predict(self, purpose, samples, resident=True):
        """Run the fitted network over ``samples``.

        ``purpose`` is ``"transform"`` (the backbone's embeddings),
        ``"proba"`` (the model, softmax) or ``"raw"`` (the model's outputs).
        Inside ``fit`` (``resident=False``) the weights still change, so the
        engine is a one-off eager one.
        """
        if purpose == "transform":
            sources, network = (self.backbone_.module,), _itself
        else:
            sources, network = (self.backbone_.module, self.head_), BackboneWithHead
        engine = self._engine_for(purpose, sources, network, resident=resident,
                                  output=self._probabilities() if purpose == "proba" else None)
        return predict_batches(engine, samples, self.backbone_.preprocess,
                               batch_size=self.batch_size, num_workers=self.num_workers,
                               verbose=self.verbose >= 2 and is_main_process())


    def _fit_probe(self, X, agree=features_agree):
        """``(run, agree)``: ``run(purpose)`` gives the outputs on some of ``X`` that the
        precision probe compares and the int8 calibration runs over."""
        def run(purpose):  # the samples are read only when it runs
            samples = self._samples(X, reset=False)
            return self._predict(purpose, samples.subset(np.arange(min(FIT_PROBE, len(samples)))))
        return run, agree

    _network_identity = staticmethod(snapshots_key)

    def _probabilities(self):
        """The function of the model's outputs that gives ``predict_proba``."""
        return _softmax


def _itself(module):
    return module


def _softmax(out, _inputs):
    return out.float().softmax(1)

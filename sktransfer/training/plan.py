"""What one training call needs, as plain values: the plan the estimator hands to training.

A fine-tuner builds a :class:`TrainingPlan` from its parameters and fitted
parts at each ``fit`` / ``partial_fit`` call and passes it to
:class:`~sktransfer.training.run.TrainingRun`, which never sees the
estimator itself. Values the skorch net is built from (rates, device,
callbacks) take effect when the net is built, at the model's first training
call, as they always have; the others hold for the call.
"""

from dataclasses import dataclass
from typing import Any, Callable, Optional


@dataclass(frozen=True, kw_only=True)
class TrainingPlan:
    """The settings and parts of one training call, fixed for its length.

    Frozen: a plan is a value; the estimator builds a new one per call. Its
    fields hold modules (the backbone's, the head, the penalty), which the
    run trains in place, and hooks: plain callables, so that training
    reads no attribute of the estimator object.

    Per-sample weights (``sample_weight``) are not a field: they are data,
    and travel with the targets (:class:`~sktransfer.inputs.WeightedTargets`)
    through the held-out split, the shards and the batches to the loss. A
    multilabel target is the ``criterion`` (binary cross-entropy) and the
    ``score`` (``"subset_accuracy"``) its estimator chooses. Room is left
    for adapters (the parameter groups that train), gradient checkpointing
    and gradient accumulation, each as one more field with a default that
    keeps today's training (gradient accumulation and checkpointing are
    two such fields).

    Examples
    --------
    >>> import dataclasses
    >>> dataclasses.is_dataclass(TrainingPlan), TrainingPlan.__dataclass_params__.frozen
    (True, True)
    """

    # -- the model -------------------------------------------------------
    backbone: Any  # the loaded Backbone: module, param_groups, preprocess, modality
    head: Any  # the head module (built by the estimator, trained in place)
    embedding_width: int  # the backbone's output width (the adaptation term's input)
    penalty: Any = None  # L2-SP module added to the training loss, or None
    criterion: Callable[[], Any]  # builds the loss module (a fresh one per call)
    name: str  # the estimator's class name, for messages

    # -- the objective ---------------------------------------------------
    objective: str  # "cross_entropy" or "contrastive"
    n_pairs: int  # contrastive pairs per sample and epoch
    score: Optional[str]  # validation score: "accuracy", "subset_accuracy", "r2" or None
    adaptation: Optional[str] = None  # "coral", "mmd", "dann" or None
    adaptation_weight: Optional[float] = None  # lambda; None for the method's default

    # -- what trains, at which rates ---------------------------------------
    freeze: Any  # the freeze parameter, as given (named in messages)
    n_frozen: int  # backbone groups frozen after the head-only phase
    freeze_epochs: int  # epochs of the head-only phase (head fitted first when > 0)
    lr: float  # the head's learning rate (already defaulted by objective)
    backbone_lr_mult: float  # the backbone's rate relative to the head's
    weight_decay: float  # decoupled weight decay of the non-norm weights
    optimizer: Any  # the optimizer parameter, resolved when the net is built
    schedule: str  # the learning-rate schedule of each call
    augment: bool  # random flips and crops of image batches in training

    # -- the loop --------------------------------------------------------
    max_epochs: int  # the net's max_epochs (each call passes its own epochs)
    batch_size: int  # samples per training batch (per rank)
    patience: Optional[int] = None  # early stopping's patience; None: no early stopping
    validation_fraction: float  # held out for early stopping (named in messages)
    callbacks: tuple = ()  # the user's skorch callbacks (copied into the net)
    verbose: int  # 0: silent; 1: the epoch table; 2: also progress bars (rank 0 only)
    num_workers: int  # DataLoader workers
    device: Any  # the device parameter, resolved when the net is built
    precision: str  # autocast precision, resolved on that device
    sync_batchnorm: bool  # SyncBatchNorm in data-parallel training
    keep_optimizer: bool  # keep the optimizer's state after the call
    accumulation_steps: int = 1  # batches whose gradients make one optimizer step
    checkpointing: bool = False  # gradient checkpointing of the backbone in training

    # -- where a rebuilt net resumes (an unpickled model) ------------------
    history: Any = None  # the skorch History of earlier calls, or None
    optimizer_state: Any = None  # an optimizer state_dict to load, or None

    # -- hooks -----------------------------------------------------------
    embed: Callable[[Any], Any]  # samples -> embeddings (ndarray) by the current weights

    @property
    def contrastive(self):
        """Whether the backbone trains on pairs (then the head is fitted afterwards)."""
        return self.objective == "contrastive"

    @property
    def trains_no_backbone_group(self):
        """Whether ``freeze`` freezes every group of the backbone."""
        return self.n_frozen >= len(self.backbone.param_groups)

    def check_adaptation(self):
        """Refuse the settings under which ``adaptation`` cannot act.

        Raises
        ------
        ValueError
            With the contrastive objective (no place for target samples), or
            when ``freeze`` leaves no backbone group to move.
        """
        method = self.adaptation
        if method is None:
            return
        if self.contrastive:
            raise ValueError(f"adaptation={method!r} aligns the embeddings under the "
                             "classification loss; objective='contrastive' trains on pairs of "
                             "labelled samples, with no place for target samples. Use "
                             "objective='cross_entropy' with adaptation.")
        if self.trains_no_backbone_group:
            raise ValueError(f"adaptation={method!r} moves the backbone's embeddings towards "
                             f"each other, but freeze={self.freeze!r} freezes all of the "
                             "backbone; freeze fewer groups (e.g. freeze='none'), or use "
                             "adaptation=None.")

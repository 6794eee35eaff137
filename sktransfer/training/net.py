"""The training and inference loops under the fine-tuners.

Training runs in :class:`FineTuningNet`, a small skorch ``NeuralNet``
subclass: skorch supplies the epoch loop, validation, history, callbacks
and early stopping; the subclass adds what fine-tuning needs (per-group
optimizer settings, the L2-SP penalty, autocast and batch augmentation on the
device, and data-parallel training over a
:class:`~sktransfer.distributed.TrainingGroup`). Prediction runs in
:func:`sktransfer.inference.predict_batches`.
"""

import math

import numpy as np
import torch
from skorch import NeuralNet
from skorch.callbacks import EarlyStopping, EpochTimer, PrintLog
from skorch.dataset import unpack_data
from skorch.helper import predefined_split
from torch.nn.parallel import DistributedDataParallel

from .._utils.device import autocast, to_device
from .accumulation import AccumulatesGradients
from .callbacks import RankMeanScoring, ValidScore
from .distributed import from_sync_batchnorm, shard_size, to_sync_batchnorm

#: Image batches of at least this many pixels per channel train channels-last
#: on the CPU, smaller ones in contiguous NCHW (see :func:`cpu_training_layout`).
CHANNELS_LAST_MIN_PIXELS = 96 * 96


def cpu_training_layout(x):
    """The memory format a CPU training step should run an image batch ``x`` in.

    PyTorch's CPU convolutions follow the layout of their input, and which
    layout trains faster depends on the image size: contiguous NCHW wins on
    small images, channels-last from about 96 px up (where NCHW's max
    pooling, BatchNorm and ReLU backward are slow). The threshold and the
    measurements behind it are in benchmarks/RESULTS.md ("Per training
    step").

    Parameters
    ----------
    x : torch.Tensor of shape (B, C, H, W)

    Returns
    -------
    torch.memory_format
        ``torch.channels_last`` from :data:`CHANNELS_LAST_MIN_PIXELS` pixels
        per channel up, ``torch.contiguous_format`` below.

    Examples
    --------
    >>> import torch
    >>> cpu_training_layout(torch.zeros(2, 3, 224, 224))
    torch.channels_last
    >>> cpu_training_layout(torch.zeros(2, 3, 64, 64))
    torch.contiguous_format
    """
    pixels = x.shape[-2] * x.shape[-1]
    return torch.channels_last if pixels >= CHANNELS_LAST_MIN_PIXELS else torch.contiguous_format


class FineTuningNet(AccumulatesGradients, NeuralNet):
    """skorch ``NeuralNet`` training a ``BackboneWithHead``.

    The data set yields ``(preprocessed batch, target)`` pairs (the
    DataLoader's ``collate_fn`` runs the backbone's preprocessing), so the
    network takes the batch as one argument even when it is a dict of
    tensors (tokenized text).

    Parameters
    ----------
    module, criterion
        As for ``NeuralNet``; given initialized.
    optimizer_groups : callable
        ``optimizer_groups(module_)`` gives the optimizer's parameter groups.
    penalty : torch.nn.Module, optional
        Called as ``penalty(module_)`` and added to the training loss (not
        to the validation loss, which stays comparable across settings).
    augment : callable, optional
        Applied to the input batch on the device in training steps only.
    amp_dtype : torch.dtype, optional
        Autocast dtype for forward passes; float16 also scales the loss.
    score : {"accuracy", "r2"} or None
        The validation score recorded each epoch (``valid_acc`` or
        ``valid_r2``), computed from the validation pass's own outputs.
    group : TrainingGroup, optional
        Train data-parallel over these processes: the training steps run
        through ``DistributedDataParallel`` (gradients averaged across
        ranks), the losses and scores in the history are the means over all
        ranks' samples, and the BatchNorm statistics are rank 0's at the end
        of every epoch. The data loaders must give each rank its own shard.
    sync_batchnorm : bool, default=False
        With a group: train with ``SyncBatchNorm`` (statistics over the
        batches of all ranks) in place of BatchNorm layers; the fitted model
        keeps plain BatchNorm.
    image_input : bool, default=False
        The inputs are image batches ``(B, C, H, W)``: CPU training steps
        put them in the memory layout that trains faster at their size
        (:func:`cpu_training_layout`). Other 4-D inputs (a user's module)
        train contiguous, as given: a channels-last input would break a
        module that ``view``s it.
    adaptation : DomainAdaptation, optional
        A domain-adaptation term (:mod:`sktransfer.training.adaptation`):
        training steps add it on source and target embeddings; its
        ``stream`` of target batches is set by each training call.
    accumulation_steps : int, default=1
        Batches whose gradients make one optimizer step
        (:mod:`sktransfer.training.accumulation`).
    **kwargs
        Everything else ``NeuralNet`` takes.

    Attributes
    ----------
    interrupted_ : bool
        Whether the last training call was interrupted (Ctrl-C, or a
        callback raising ``KeyboardInterrupt``) rather than finishing or
        stopping early. skorch ends training quietly on any
        ``KeyboardInterrupt`` and still runs ``on_train_end``; the estimator
        reads this flag to raise the interrupt again once its state is
        consistent.
    """

    def __init__(self, module, criterion, *, optimizer_groups, penalty=None, augment=None,
                 amp_dtype=None, score=None, group=None, sync_batchnorm=False,
                 image_input=False, adaptation=None, accumulation_steps=1, **kwargs):
        # Set before NeuralNet.__init__: afterwards skorch only accepts torch
        # modules as attributes inside its initialize methods.
        self.optimizer_groups = optimizer_groups
        self.penalty = penalty
        self.augment = augment
        self.amp_dtype = amp_dtype
        self.score = score
        self.group = group
        self.sync_batchnorm = sync_batchnorm
        self.image_input = image_input
        self.adaptation = adaptation
        self.accumulation_steps = accumulation_steps
        self.ddp_ = None
        self.call_loader_options_ = {}
        super().__init__(module, criterion, **kwargs)

    @property
    def _default_callbacks(self):
        # The validation score goes before PrintLog so that the epoch table shows it.
        return [
            ("epoch_timer", EpochTimer()),
            ("train_loss", RankMeanScoring(name="train_loss", on_train=True)),
            ("valid_loss", RankMeanScoring(name="valid_loss")),
            ("valid_score", ValidScore(self.score)),
            ("print_log", PrintLog()),
        ]

    def initialize_module(self):
        super().initialize_module()
        if self.penalty is not None:
            # Registered as a module of the net, so its reference buffers
            # follow the network to the training device.
            self.penalty_ = self.penalty
        if self.adaptation is not None:
            self.adaptation_ = self.adaptation
        return self

    def initialize_optimizer(self, triggered_directly=None):
        kwargs = self.get_params_for("optimizer")
        kwargs.setdefault("lr", self.lr)
        groups = self.optimizer_groups(self.module_)
        if self.adaptation is not None and self.adaptation.discriminator is not None:
            # DANN's domain classifier trains at the head's rate (first, so
            # that event_lr keeps recording the head's group, the last one).
            groups = [{"params": list(self.adaptation.discriminator.parameters()),
                       "lr": self.lr, "base_lr": self.lr, "weight_decay": 0.0,
                       "name": "domain_classifier"}, *groups]
        self.optimizer_ = self.optimizer(groups, **kwargs)
        return self

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        self.interrupted_ = False
        device = torch.device(self.device)
        for name in self._modules + self._criteria:
            getattr(self, name + "_").to(device)
        if device.type != "cpu" and self.optimizer_.state:
            # A kept optimizer state waits on the CPU; loading it casts it to
            # the device of its parameters, which just moved.
            self.optimizer_.load_state_dict(self.optimizer_.state_dict())
        # Without a scaler, small float16 gradients would underflow to zero.
        use_scaler = self.amp_dtype == torch.float16 and device.type != "cpu"
        self.grad_scaler_ = torch.amp.GradScaler(device.type) if use_scaler else None
        self.ddp_ = None
        self.synced_norms_ = []
        if self.group is not None and self.sync_batchnorm:
            self.synced_norms_ = to_sync_batchnorm(self.module_)

    def run_single_epoch(self, iterator, training, prefix, step_fn, **fit_params):
        if training:
            self.start_accumulating(len(iterator))
        # With accumulation, the ranks' gradients are added by hand at each
        # step (accumulation.py), not by DistributedDataParallel per batch.
        if training and self.group is not None and self.accumulation_steps == 1:
            self._wrap_for_data_parallel()
        super().run_single_epoch(iterator, training, prefix, step_fn, **fit_params)
        if training and self.group is not None:
            self.group.broadcast_buffers(self.module_)

    def _wrap_for_data_parallel(self):
        """(Re)build the DistributedDataParallel wrapper when the trainable parameters change.

        DDP averages the gradients of the parameters that required them when
        it was built; head-first training unfreezes the backbone after
        ``freeze_epochs``, so the wrapper is rebuilt then (at the same epoch
        on every rank).
        """
        trainable = tuple(p.requires_grad for p in self.module_.parameters())
        if self.ddp_ is not None and trainable == self.ddp_trainable_:
            return
        device = torch.device(self.device)
        # static_graph: a backbone may hold trainable parameters its
        # embedding does not use (a transformer's pooler); DDP learns which in
        # the first step instead of searching the graph at every step
        # (find_unused_parameters), since the set only changes with the
        # freezing, which rebuilds the wrapper.
        ddp = DistributedDataParallel(
            self.module_, device_ids=[device.index] if device.type == "cuda" else None,
            static_graph=True)
        # A wrapper of module_, not a part of the net: skorch would register
        # a module attribute as one (to move, save and re-initialize).
        object.__setattr__(self, "ddp_", ddp)
        self.ddp_trainable_ = trainable

    def train_call(self, train, valid=None, *, epochs, group=None, sampler=None,
                   generator=None, valid_sampler=None, drop_last=False):
        """Train for ``epochs`` more epochs: one ``fit`` or ``partial_fit`` of an estimator.

        The settings of this call (its validation data, its process group and
        how its loaders draw batches) hold for this call only: afterwards the
        net keeps no reference to the data or the group.

        Parameters
        ----------
        train, valid : Dataset
            ``valid`` None: no validation pass (and no early stopping).
        epochs : int
        group : TrainingGroup, optional
        sampler, generator, drop_last
            The training loader's; ``valid_sampler`` the validation loader's.
        """
        self.set_params(max_epochs=epochs, group=group,
                        train_split=None if valid is None else predefined_split(valid))
        self.call_loader_options_ = {
            "iterator_train": {"sampler": sampler, "generator": generator,
                               "drop_last": drop_last},
            "iterator_valid": {"sampler": valid_sampler}}
        try:
            self.partial_fit(train)
        finally:
            self.call_loader_options_ = {}
            self.set_params(train_split=None, group=None)

    def get_params_for(self, prefix):
        params = super().get_params_for(prefix)
        # The loaders of the current training call (train_call) draw with its sampler.
        params.update(self.call_loader_options_.get(prefix, {}))
        return params

    def notify(self, method_name, **cb_kwargs):
        if method_name != "on_epoch_end":
            return super().notify(method_name, **cb_kwargs)
        # skorch's EarlyStopping ends training by raising KeyboardInterrupt
        # from on_epoch_end, which skorch's partial_fit swallows like a real
        # interrupt: note which one it was.
        getattr(self, method_name)(self, **cb_kwargs)
        for _, callback in self.callbacks_:
            try:
                getattr(callback, method_name)(self, **cb_kwargs)
            except KeyboardInterrupt:
                self.stopped_early_ = isinstance(callback, EarlyStopping)
                raise
        return None

    def fit_loop(self, X, y=None, **fit_params):
        self.stopped_early_ = False
        try:
            return super().fit_loop(X, y, **fit_params)
        except KeyboardInterrupt:
            self.interrupted_ = not self.stopped_early_
            raise

    def release_training_state(self, keep_optimizer=False):
        """Free what only training needs, and move what stays to the CPU.

        Gradients, the loss scaler, early stopping's copy of the best weights
        (skorch keeps it in any ``EarlyStopping`` callback, the user's too, and
        an exception skips the ``on_train_end`` that would restore it) and, unless ``keep_optimizer``, the optimizer's state (Adam's moments:
        twice the model) are dropped; the network, the criterion, the penalty
        and a kept optimizer state go to the CPU, so a fitted model holds no
        accelerator memory between calls.
        """
        self.optimizer_.zero_grad(set_to_none=True)
        self.grad_scaler_ = None
        self.ddp_ = None
        from_sync_batchnorm(getattr(self, "synced_norms_", []))
        self.synced_norms_ = []
        for _, callback in self.callbacks_:
            if isinstance(callback, EarlyStopping):
                callback.best_model_weights_ = None
        if keep_optimizer:
            for state in self.optimizer_.state.values():
                for key, value in state.items():
                    if isinstance(value, torch.Tensor):
                        state[key] = value.cpu()
        else:
            self.optimizer_.state.clear()
        if torch.device(self.device).type != "cpu":
            for name in self._modules + self._criteria:
                getattr(self, name + "_").to("cpu")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def batches_per_epoch(self, n_samples):
        """Optimizer steps one epoch over ``n_samples`` training samples takes (on each rank)."""
        n_samples = shard_size(n_samples, self.group)
        if self.get_params_for("iterator_train").get("drop_last", False):
            return n_samples // self.batch_size
        return math.ceil(n_samples / self.batch_size)

    def infer(self, x, **fit_params):
        device = torch.device(self.device)
        x = to_device(x, device)
        if self.augment is not None and self.module_.training:
            x = self.augment(x)
        if self.module_.training and device.type == "cpu" and isinstance(x, torch.Tensor) \
                and x.ndim == 4:
            # Batches sliced from (N, H, W, C) arrays keep channels-last
            # strides, those from (N, C, H, W) arrays are contiguous; the
            # convolutions follow whichever they get. For CPU training the
            # faster layout depends on the image size (contiguous at 64 px:
            # fit with frozen layers went from 1.01x plain skorch to 0.95x;
            # channels-last at 224 px: fit went from 1.17x a hand-written
            # loop's CPU time to 1.04x, benchmarks/bench_finetune.py). CPU
            # inference keeps the layout it is given.
            layout = cpu_training_layout(x) if self.image_input else torch.contiguous_format
            x = x.contiguous(memory_format=layout)
        # Training steps of a data-parallel fit go through the DDP wrapper,
        # which averages the gradients; evaluation runs on each rank alone.
        model = self.ddp_ if self.ddp_ is not None and self.module_.training else self.module_
        with autocast(device, self.amp_dtype):
            return model(x)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        if isinstance(y_true, dict):
            # Batches with sample_weight: the epoch's loss is averaged by
            # weight, not by batch size (RankMeanScoring reads this column).
            # Summed before the batch moves, so a GPU step waits for nothing.
            self.history.record_batch(("train" if training else "valid") + "_weight",
                                      float(y_true["weight"].sum()))
        y_true = to_device(y_true, torch.device(self.device))
        # Losses are computed in float32 even when the forward pass autocasts.
        loss = self.criterion_(y_pred.float(), y_true)
        if training and self.penalty is not None:
            loss = loss + self.penalty_(self.module_)
        return loss

    def train_step(self, batch, **fit_params):
        if self.accumulation_steps > 1:
            return self.accumulated_train_step(batch, **fit_params)
        return super().train_step(batch, **fit_params)

    def train_step_single(self, batch, **fit_params):
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        if self.adaptation is None:
            y_pred = self.infer(Xi, **fit_params)
            loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        else:
            y_pred, loss = self._adapted_loss(Xi, yi)
        scale = self.loss_scale(yi)  # the batch's summed loss, when accumulating
        summed = loss if scale is None else loss * scale
        scaler = self.grad_scaler_
        if scaler is None:
            summed.backward()
        else:
            scaler.scale(summed).backward()
            if scale is None:
                # Callbacks such as gradient clipping must see the true gradients.
                scaler.unscale_(self.optimizer_)
        if self.adaptation is not None and self.group is not None and scale is None \
                and self.adaptation_.discriminator is not None:
            # The domain classifier sits outside DistributedDataParallel's
            # module: average its gradients across the ranks by hand.
            for p in self.adaptation_.discriminator.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad.div_(self.group.world_size)
        return {"loss": loss, "y_pred": y_pred}

    def _adapted_loss(self, Xs, ys):
        """The predictions and loss of a training step with domain adaptation.

        The source batch and a target batch of the same size go through the
        network together (one forward pass, so BatchNorm sees both domains);
        the supervised loss is on the source rows, the adaptation term on
        the embeddings (the head's input) of both.
        """
        adaptation = self.adaptation_
        n_source = _length(Xs)
        Xt = adaptation.stream.next(n_source)
        adaptation.progress = adaptation.stream.progress
        embeddings = []
        hook = self.module_.head.register_forward_pre_hook(
            lambda _module, args: embeddings.append(args[0]))
        try:
            joint = _concat(Xs, Xt)
            if joint is not None:
                outputs = self.infer(joint)
                y_pred = outputs[:n_source]
                source, target = embeddings[0][:n_source], embeddings[0][n_source:]
            else:
                y_pred = self.infer(Xs)
                self.infer(Xt)
                source, target = embeddings
        finally:
            hook.remove()
        loss = self.get_loss(y_pred, ys, X=Xs, training=True)
        term = adaptation(source, target)
        self.history.record_batch("adaptation_loss", float(term.detach()))
        return y_pred, loss + term

    def _step_optimizer(self, step_fn):
        scaler = self.grad_scaler_
        if scaler is None:
            return super()._step_optimizer(step_fn)
        step_fn()
        scaler.step(self.optimizer_)
        scaler.update()
        return None


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


class Rows(torch.utils.data.Dataset):
    """Some rows of a :class:`~sktransfer.inputs.Samples`, without copying it.

    ``__getitems__`` maps a whole batch of indices at once, so the
    DataLoader still fetches (and slices arrays) one batch at a time.
    """

    def __init__(self, samples, indices):
        self.samples = samples
        self.indices = np.asarray(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.__getitems__([i])

    def __getitems__(self, indices):
        return self.samples.__getitems__(self.indices[np.asarray(indices)])

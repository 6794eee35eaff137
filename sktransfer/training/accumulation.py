"""Gradient accumulation: one optimizer step from the gradients of several batches.

``gradient_accumulation_steps=k`` makes each optimizer step from ``k``
consecutive batches, as one batch of their samples together: each batch's
loss (a mean, see :class:`~sktransfer.training.weights.WeightedLoss`) is
multiplied by its normalizer (its number of samples, or its total weight)
before the backward pass, and the summed gradients are divided by the
normalizers' total before the step. So the step is the one a batch of all
``k`` batches' samples would give, whatever their sizes and weights (up to
float rounding, and except what depends on the batch itself: BatchNorm
statistics, the domain-adaptation term). A penalty added to every batch's
loss (L2-SP) counts once per step, as in one big batch.

In a data-parallel fit, the ranks' summed gradients and normalizers are
added across ranks before that division (by hand: DistributedDataParallel
would average each rank's own mean), so a step is the weighted mean over
every rank's samples.
"""

import math

import torch
from skorch.utils import TeeGenerator


class AccumulatesGradients:
    """Mixin of :class:`~sktransfer.training.net.FineTuningNet`: steps over several batches.

    The net sets ``accumulation_steps``; a training epoch calls
    :meth:`start_accumulating` with its number of batches, and each training
    batch goes through :meth:`accumulated_train_step` when
    ``accumulation_steps > 1``. ``stepped_`` says whether the last batch
    ended with an optimizer step (the learning-rate schedule steps then).
    """

    accumulation_steps = 1

    def steps_per_epoch(self, n_samples):
        """Optimizer steps one epoch over ``n_samples`` training samples takes (per rank)."""
        return math.ceil(self.batches_per_epoch(n_samples) / self.accumulation_steps)

    def start_accumulating(self, n_batches):
        """Begin a training epoch of ``n_batches`` batches."""
        self.micro_batch_ = 0
        self.epoch_batches_ = n_batches
        self.accumulated_norm_ = 0.0
        self.stepped_ = True

    def loss_scale(self, y_true):
        """What a batch's mean loss is multiplied by before its backward pass (None: 1)."""
        if self.accumulation_steps == 1:
            return None
        norm = self.criterion_.normalizer(y_true)
        self.accumulated_norm_ += norm
        return norm

    def accumulated_train_step(self, batch, **fit_params):
        """One training batch; the optimizer steps after the last batch of each group."""
        k, i = self.accumulation_steps, self.micro_batch_
        start = i - i % k
        last = i == min(start + k, self.epoch_batches_) - 1
        if i == start:
            self._zero_grad_optimizer()
            self.accumulated_norm_ = 0.0
        step = self.train_step_single(batch, **fit_params)
        self.micro_batch_ += 1
        self.stepped_ = last
        if last:
            self._average_accumulated_gradients()
            self.notify("on_grad_computed",
                        named_parameters=TeeGenerator(self.get_all_learnable_params()),
                        batch=batch, training=True)
            scaler = self.grad_scaler_
            if scaler is None:
                self.optimizer_.step()
            else:
                scaler.step(self.optimizer_)
                scaler.update()
        return step

    def _average_accumulated_gradients(self):
        """Divide the summed gradients by the total normalizer (over all ranks)."""
        if self.grad_scaler_ is not None:
            self.grad_scaler_.unscale_(self.optimizer_)
        grads = [p.grad for _, p in self.get_all_learnable_params() if p.grad is not None]
        norm = torch.tensor(float(self.accumulated_norm_), dtype=torch.float64)
        if self.group is not None:
            device = grads[0].device if grads else torch.device(self.device)
            norm = norm.to(device)
            torch.distributed.all_reduce(norm)
            for grad in grads:
                torch.distributed.all_reduce(grad)
        total = float(norm)
        # A group of batches whose weights are all zero: no gradient (0 / 1).
        for grad in grads:
            grad.div_(total if total > 0 else 1.0)

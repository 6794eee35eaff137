"""Data-parallel fine-tuning across processes launched by torchrun, accelerate or srun.

A script that fits a fine-tuner, started with ``torchrun --nproc_per_node=N
script.py`` (or ``accelerate launch``, or ``srun`` with ``MASTER_ADDR`` and
``MASTER_PORT`` exported), runs the same ``fit`` in N processes. Each process
trains on its own shard of every epoch, PyTorch's
``DistributedDataParallel`` averages the gradients, and every decision that
depends on data (the validation split, early stopping, the schedule) is made
from values that are the same on every rank. This module holds what the
estimators need for that: reading the launch, joining the process group,
the collectives, the samplers and the BatchNorm conversion.

Every function here is a no-op outside a launch (``group`` None): nothing
changes, and nothing is slower, for a fit in one process.
"""

import contextlib
import math
import threading
import zlib

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from .._utils.launch import is_worker_of_launch, launch_environment, mark_launched_process
from .._utils.seeding import seed_from

_FIT_LOCK = threading.Lock()


class TrainingGroup:
    """The processes one data-parallel fit trains over.

    Parameters
    ----------
    rank, world_size : int
    device : torch.device
        This process's training device; the collectives run on it (NCCL
        needs CUDA tensors, gloo takes CPU ones).
    """

    def __init__(self, rank, world_size, device):
        self.rank = rank
        self.world_size = world_size
        self.device = device

    def __repr__(self):
        return f"TrainingGroup(rank={self.rank}, world_size={self.world_size})"

    def _tensor(self, values, dtype):
        # NCCL reduces CUDA tensors only; gloo takes CPU ones.
        device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        if isinstance(values, torch.Tensor):
            return values.detach().to(device=device, dtype=dtype)
        return torch.as_tensor(np.asarray(values), dtype=dtype, device=device)

    def all_reduce(self, values):
        """The sum over ranks of ``values`` (an array of floats), as float64 numpy."""
        tensor = self._tensor(values, torch.float64)
        dist.all_reduce(tensor)
        return tensor.cpu().numpy()

    def all_gather(self, values):
        """The int64 ``values`` of every rank, stacked: shape (world_size, len(values))."""
        tensor = self._tensor(values, torch.int64)
        gathered = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(gathered, tensor)
        return torch.stack(gathered).cpu().numpy()

    def broadcast_int(self, value):
        """Rank 0's ``value`` on every rank."""
        tensor = self._tensor([value], torch.int64)
        dist.broadcast(tensor, src=0)
        return int(tensor.item())

    def broadcast_buffers(self, module):
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

        DistributedDataParallel does this before each training forward; after
        the last step of an epoch each rank holds statistics updated by its
        own batch, which validation and the fitted model must not depend on.
        """
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)

    def check_same_data(self, target, params):
        """Raise a ValueError on every rank unless every rank was given the same fit.

        Compares the number of samples, the targets and the estimator's
        plain parameters (numbers, strings and their tuples; other values
        by type): a rank training with another learning rate would silently
        average gradients of different models, and one with other
        ``max_epochs`` would leave the others waiting.
        """
        y = np.ascontiguousarray(target)
        names = sorted(params)
        mine = [len(y), zlib.crc32(y.tobytes())] + [
            zlib.crc32(_plain_repr(params[name]).encode()) for name in names]
        every = self.all_gather(mine)
        if (every == every[0]).all():
            return
        sizes = ", ".join(f"rank {r}: {n}" for r, n in enumerate(every[:, 0]))
        differing = [name for i, name in enumerate(names) if len(set(every[:, 2 + i])) > 1]
        if differing:
            raise ValueError(
                f"the processes of this distributed fit were given different parameters: "
                f"{differing} differ between ranks. Every rank must fit the same estimator "
                "(a RandomizedSearchCV under a launch needs an integer random_state, so that "
                "every rank draws the same candidates).")
        what = "sizes" if len(set(every[:, 0])) > 1 else "targets or sample_weight"
        raise ValueError(
            f"the processes of this distributed fit were given different data ({what}; "
            f"samples per rank: {sizes}). Every rank must call fit with the same X, y and "
            "sample_weight: each process trains on its own shard of them, chosen by the fit. "
            "Load the data "
            "in a fixed order, and give every split that shuffles an integer random_state "
            "(KFold(shuffle=True, random_state=0)).")

    def broadcast_module(self, module):
        """Copy rank 0's parameters and buffers of ``module`` to every rank."""
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                # NCCL broadcasts CUDA tensors only: go through the device.
                sent = self._tensor(tensor, tensor.dtype)
                dist.broadcast(sent, src=0)
                tensor.copy_(sent)


def _plain_repr(value):
    """``repr`` of plain values; the type of others (their repr may hold an address)."""
    if value is None or isinstance(value, (bool, int, float, str, np.generic)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return type(value).__name__ + "(" + ",".join(_plain_repr(v) for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_plain_repr(k)}:{_plain_repr(v)}"
                              for k, v in sorted(value.items(), key=lambda kv: repr(kv[0]))) + "}"
    return type(value).__module__ + "." + type(value).__qualname__


def join_training_group(distributed, device):
    """The :class:`TrainingGroup` a fit trains over, or None to train in this process alone.

    ``distributed="auto"`` uses the process group when one is initialized
    with more than one process, and otherwise initializes one when this
    process was launched as one of several ranks (see
    :func:`launch_environment`): NCCL for CUDA devices, gloo for the CPU.
    ``True`` does the same but raises when there is no launch; ``False``
    returns None.

    Every rank must call the fit: one rank fitting alone (a fit under
    ``if is_main_process():``) waits for the others until PyTorch's
    collective timeout; pass ``distributed=False`` to such a fit.

    Raises
    ------
    ValueError
        For ``distributed=True`` outside a launch, a worker process of a
        launched rank (GridSearchCV with ``n_jobs > 1``), a device other
        than CPU or CUDA (or the CPU with an NCCL group), or a PyTorch
        without ``torch.distributed``.
    """
    if distributed != "auto":
        distributed = bool(distributed)
    if distributed is False:
        return None
    initialized = dist.is_available() and dist.is_initialized()
    launch = launch_environment()
    if initialized:
        rank, world_size = dist.get_rank(), dist.get_world_size()
    elif launch is not None:
        rank, world_size = launch.rank, launch.world_size
    else:
        rank, world_size = 0, 1
    if world_size < 2:
        if distributed is True:
            raise ValueError("distributed=True trains across the processes of a launch, but "
                             "this process was not launched as one of several (run the script "
                             "with torchrun --nproc_per_node=N, accelerate launch or srun), and "
                             "no process group of several is initialized; use distributed='auto' "
                             "or False.")
        return None
    # Also with a group initialized: a process forked after a first fit
    # (joblib's multiprocessing backend) inherits its parent's group.
    if is_worker_of_launch():
        raise ValueError(
            f"this fit runs in a worker process started by rank {rank} of a distributed launch "
            "(GridSearchCV, cross_validate or joblib with n_jobs > 1?), where a fit cannot "
            "join the launch's process group. Use n_jobs=1: the search then runs on every rank "
            "and each of its fits trains across all of them; or pass distributed=False to "
            "train each fit alone in its worker.")
    # From here on, a process this rank starts (a search's workers) knows it is not a rank.
    mark_launched_process()
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"distributed training runs on CUDA devices (NCCL) or the CPU (gloo); "
                         f"device {device} is neither. Use device='cpu', device='cuda' or "
                         "distributed=False.")
    if not dist.is_available():
        raise ValueError("this build of PyTorch has no torch.distributed; use "
                         "distributed=False.")
    if not initialized:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                init_method="env://", rank=rank, world_size=world_size)
    elif dist.get_backend() == "nccl" and device.type != "cuda":
        raise ValueError(f"the initialized process group uses NCCL, which needs CUDA devices, "
                         f"but this fit trains on {device}; use device='cuda' or a gloo group.")
    return TrainingGroup(rank, world_size, device)


@contextlib.contextmanager
def training_group(distributed, device):
    """Join the training group for the length of one fit (see :func:`join_training_group`).

    Fits in one process train one at a time: two at once would interleave
    their collectives.
    """
    group = join_training_group(distributed, device)
    if group is None:
        yield None
        return
    if not _FIT_LOCK.acquire(blocking=False):
        raise RuntimeError(
            "another distributed fit is running in this process (a search with n_jobs > 1 "
            "and the threading backend?); distributed fits run one at a time: use n_jobs=1.")
    try:
        yield group
    finally:
        _FIT_LOCK.release()


def shared_random_state(group, random_state):
    """The seed every rank of ``group`` trains with: rank 0's.

    Without a group, ``random_state`` unchanged. With one, an int: the seed
    ``random_state`` gives on rank 0 (a fresh one when it is None), so the
    initialization, the validation split and the shuffling agree on every
    rank even without a seed.
    """
    if group is None:
        return random_state
    if random_state is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0] % (2**31 - 1))
    else:
        seed = seed_from(random_state)
    return group.broadcast_int(seed)


class SeededShuffle(DistributedSampler):
    """A new permutation of ``range(n)`` each epoch, drawn from its own seed; one rank's share.

    The DataLoader's default shuffling draws from torch's global RNG, and so
    does its choice of worker seeds, once per epoch without workers but once
    per call with persistent workers: the dropout masks drawn from the same
    stream then depend on ``num_workers``. With this sampler and a loader
    ``generator`` of its own, the global stream holds only the model's draws,
    so ``num_workers`` does not change the model.

    Across ``world_size`` ranks, rank ``r`` takes every ``world_size``-th
    index of the same permutation, starting at ``r``, padded so that every
    rank runs the same number of batches (PyTorch's ``DistributedSampler``).
    The epoch advances by itself at each pass.

    Parameters
    ----------
    n : int
        Rows of the data set.
    seed : int
    numbered_epochs : bool, default=False
        Yield ``epoch * n + i`` instead of ``i``, so a data set can tell the
        epochs apart (see :class:`~sktransfer.training.contrastive.PairRows`).
    rank, world_size : int, default=0, 1

    Examples
    --------
    >>> shuffle = SeededShuffle(4, seed=0)
    >>> first, second = list(shuffle), list(shuffle)
    >>> sorted(first), first != second, list(SeededShuffle(4, seed=0)) == first
    ([0, 1, 2, 3], True, True)
    >>> halves = [list(SeededShuffle(5, seed=0, rank=r, world_size=2)) for r in (0, 1)]
    >>> [len(h) for h in halves], sorted(set(halves[0] + halves[1]))
    ([3, 3], [0, 1, 2, 3, 4])
    """

    def __init__(self, n, seed, numbered_epochs=False, rank=0, world_size=1):
        super().__init__(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.n = n
        self.numbered_epochs = numbered_epochs

    def __iter__(self):
        indices = list(super().__iter__())
        # Numbered epochs: epoch e yields e * n + i, for data sets that serve
        # different rows each epoch (contrastive.PairRows: fresh pairs).
        offset = self.epoch * self.n if self.numbered_epochs else 0
        self.set_epoch(self.epoch + 1)
        return iter([i + offset for i in indices])


class Shard(torch.utils.data.Sampler):
    """Rank ``rank``'s share of ``range(n)`` for evaluation, without padding.

    Every ``world_size``-th index from ``rank``; all of ``range(n)`` when
    there are fewer indices than ranks, so that every rank evaluates
    something and a mean weighted by counts stays exact.

    Examples
    --------
    >>> list(Shard(5, 1, 2)), list(Shard(1, 1, 2))
    ([1, 3], [0])
    """

    def __init__(self, n, rank, world_size):
        self.indices = list(range(n)) if n < world_size else list(range(rank, n, world_size))

    def __len__(self):
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


def shard_size(n, group):
    """Training samples per rank and epoch (the padded share of ``n``)."""
    return n if group is None else math.ceil(n / group.world_size)


def to_sync_batchnorm(module):
    """Replace the BatchNorm layers in ``module`` by ``SyncBatchNorm``, in place.

    The new layers share the parameters and statistics of the old ones;
    returns what :func:`from_sync_batchnorm` needs to put the old layers back
    (the fitted model keeps plain BatchNorm, which runs without a process
    group).
    """
    replaced = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.modules.batchnorm._BatchNorm) \
                    and not isinstance(child, torch.nn.SyncBatchNorm):
                sync = torch.nn.SyncBatchNorm.convert_sync_batchnorm(child)
                setattr(parent, name, sync)
                replaced.append((parent, name, child))
    return replaced


def from_sync_batchnorm(replaced):
    """Undo :func:`to_sync_batchnorm`, keeping the trained values and their devices."""
    for parent, name, original in reversed(replaced):
        sync = getattr(parent, name)
        # Moving a module replaces its buffer tensors: take the current ones.
        original._parameters.update(sync._parameters)
        original._buffers.update(sync._buffers)
        original.train(sync.training)
        setattr(parent, name, original)

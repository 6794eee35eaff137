"""Reading the launch this process belongs to: torchrun, ``accelerate launch`` or srun.

A leaf: the device module maps CUDA to this rank's GPU with it, and the
training package joins the launch's process group with it.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

#: Set in the environment of a rank when its first fit starts, so that a
#: worker process it starts later (GridSearchCV with ``n_jobs > 1``) sees the
#: launch's variables but can tell that it is not one of its ranks.
LAUNCHED_PID = "SKTRANSFER_LAUNCHED_PID"


@dataclass(frozen=True)
class Launch:
    """Where this process stands in a launch: its rank, the number of ranks,
    and its rank on this machine (which GPU it uses)."""

    rank: int
    world_size: int
    local_rank: int


def launch_environment(environ=None):
    """The launch this process belongs to, read from its environment, or None.

    torchrun and ``accelerate launch`` set ``RANK``, ``WORLD_SIZE`` and
    ``LOCAL_RANK``; in a job step started by ``srun`` the ranks come from
    ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` and ``SLURM_LOCALID`` once
    ``MASTER_ADDR`` and ``MASTER_PORT`` name the rendezvous (the step's task
    count, not the job's: a batch script itself is not a rank).

    Parameters
    ----------
    environ : mapping, optional
        The environment to read; ``os.environ`` by default.

    Returns
    -------
    Launch or None

    Examples
    --------
    >>> launch_environment({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    Launch(rank=1, world_size=4, local_rank=1)
    >>> launch_environment({}) is None
    True
    """
    env = os.environ if environ is None else environ
    try:
        if "RANK" in env and "WORLD_SIZE" in env:
            return Launch(int(env["RANK"]), int(env["WORLD_SIZE"]),
                          int(env.get("LOCAL_RANK", 0)))
        if ("SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env and "MASTER_ADDR" in env
                and "MASTER_PORT" in env):
            return Launch(int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]),
                          int(env.get("SLURM_LOCALID", 0)))
    except ValueError as exc:
        raise ValueError(f"the launch environment is malformed: {exc}") from exc
    return None


def mark_launched_process():
    """Record this process as a rank of its launch, unless it is a worker of one.

    Called where a fit starts, never at import: importing a library must not
    write the environment. A worker that a rank started before its first fit
    carries no mark yet, and is told apart by :func:`is_worker_of_launch`.
    """
    try:
        launch = launch_environment()
    except ValueError:
        return  # a malformed launch is reported by the fit itself
    if launch is not None and LAUNCHED_PID not in os.environ and not is_worker_of_launch():
        os.environ[LAUNCHED_PID] = str(os.getpid())


def is_worker_of_launch():
    """Whether this process inherited its launch variables from the rank that started it.

    True when a rank marked itself before starting this process (the mark
    names another pid), or, without a mark, when this process was started by
    Python's multiprocessing (joblib's loky and multiprocessing backends,
    ``concurrent.futures``) from a parent whose own environment already held
    the launch. A process that ``torch.multiprocessing.spawn`` started and
    that set ``RANK`` itself is a rank: its parent's environment had none.
    """
    marked = os.environ.get(LAUNCHED_PID)
    if marked is not None:
        return marked != str(os.getpid())
    import multiprocessing

    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return False
    mine = launch_environment()
    try:
        # The environment the parent was started with (Linux); where it
        # cannot be read, only the mark tells.
        with open(f"/proc/{parent.pid}/environ", "rb") as fh:
            raw = fh.read().split(b"\0")
    except OSError:
        return False
    inherited = dict(item.decode("utf-8", "replace").split("=", 1)
                     for item in raw if b"=" in item)
    try:
        theirs = launch_environment(inherited)
    except ValueError:
        return False
    return theirs is not None and theirs == mine


def launch_device(device):
    """``device``, with a CUDA device without index mapped to this rank's GPU.

    Under a launch, process ``LOCAL_RANK`` uses GPU ``LOCAL_RANK`` of its
    machine; elsewhere, or for an explicit index, the device is unchanged.
    """
    if device.type != "cuda" or device.index is not None:
        return device
    launch = launch_environment()
    if launch is None:
        return device
    return torch.device("cuda", launch.local_rank % max(1, torch.cuda.device_count()))


def is_main_process():
    """Whether this process is the one that prints and saves: rank 0, or the only process.

    True on rank 0 of an initialized process group, else on rank 0 of the
    launch this process belongs to (see :func:`launch_environment`), and in
    a process that is not part of a launch.

    Returns
    -------
    bool

    Examples
    --------
    >>> from sktransfer.distributed import is_main_process
    >>> is_main_process()  # a plain run
    True
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    launch = launch_environment()
    return launch is None or launch.rank == 0

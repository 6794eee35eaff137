"""The one inference loop: embeddings (``transform``) and predictions.

Batches are drawn from a :class:`~sktransfer.inputs.Samples` source, run
through the module under ``torch.inference_mode`` and autocast, and written
into one preallocated float32 array, so memory is the output plus a batch.

A fitted model is read-only here, so that many threads can share one (a web
server, Dask's threaded workers): each call runs on its own replica of the
module (see :func:`inference_replica`), which is put in eval mode, carries
the call's forward hooks and, on an accelerator, holds the call's copies of
the weights. The shared module is never moved, hooked or switched to eval.
"""

import copy
import itertools

import numpy as np
import torch
from tqdm.auto import tqdm

from ._utils.device import autocast, resolve_device, to_device
from .inputs import Collate


def batch_order(samples, preprocess, batch_size):
    """Index batches; text goes longest-first by token count to keep padding short.

    Examples
    --------
    >>> from sktransfer.inputs import as_samples
    >>> import numpy as np
    >>> [b.tolist() for b in batch_order(as_samples(np.zeros((5, 2)), "tensor"), None, 2)]
    [[0, 1], [2, 3], [4]]
    """
    order = np.arange(len(samples))
    if samples.kind == "text":
        lengths = getattr(preprocess, "lengths", None)
        sizes = lengths(samples.data) if lengths else [len(s) for s in samples.data]
        order = np.argsort(-np.asarray(sizes), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def inference_replica(module, device):
    """A private copy of ``module`` for one inference call, in eval mode.

    The replica is a new tree of module objects (so eval mode and forward
    hooks set on it never reach ``module``) whose parameters and buffers are
    ``module``'s own tensors where they already sit on ``device`` (no copy:
    on the CPU a replica costs the module tree, not the weights), and copies
    on ``device`` where they do not. ``module`` itself is never moved:
    ``Module.to`` would replace the data of Parameter objects it shares with
    other threads' calls.

    Parameters
    ----------
    module : torch.nn.Module
        The fitted model, shared and left untouched.
    device : torch.device

    Returns
    -------
    torch.nn.Module

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout()).train()
    >>> replica = inference_replica(net, torch.device("cpu"))
    >>> replica[0].weight is net[0].weight, replica.training, net.training
    (True, False, True)
    """
    memo = {}
    # Tied weights are one tensor, so they stay tied in the replica.
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        memo[id(tensor)] = _on(tensor, device)
    replica = copy.deepcopy(module, memo)
    return replica.eval()


def _on(tensor, device):
    """``tensor`` itself if it is on ``device``, else a copy there of the same kind."""
    if tensor.device == device or (device.index is None and tensor.device.type == device.type):
        return tensor
    moved = tensor.detach().to(device)
    if isinstance(tensor, torch.nn.Parameter):
        return torch.nn.Parameter(moved, requires_grad=tensor.requires_grad)
    return moved


def predict_batches(module, samples, preprocess, *, batch_size, device="auto", amp_dtype=None,
                    num_workers=0, layers=None, output=None, verbose=False, desc="predicting"):
    """Run ``module`` over ``samples`` a batch at a time, in inference mode.

    Safe to call from many threads at once on the same ``module``: each call
    runs an eval-mode replica of it (:func:`inference_replica`) and leaves
    ``module`` exactly as it was, on its device, in its mode, without hooks,
    and torch's global RNG untouched.

    Parameters
    ----------
    module : torch.nn.Module
        The fitted model; read, never changed. On an accelerator the call
        copies its weights to the device and frees them afterwards, so fitted
        models hold no accelerator memory between calls.
    samples : Samples
        Raw samples, fetched a batch at a time.
    preprocess : callable
        The backbone's batch preprocessing.
    batch_size : int
    device : str or torch.device, default="auto"
    amp_dtype : torch.dtype, optional
        Autocast dtype.
    num_workers : int, default=0
        DataLoader worker processes.
    layers : list of str, optional
        Names of submodules whose outputs to gather (through forward hooks on
        the call's replica). The module result handed to ``output`` is then
        a dict of those outputs by name instead of the module's output.
    output : callable, optional
        ``output(result, inputs)`` maps each batch's module output on the
        device (a softmax, pooled layer features).
    verbose : bool, default=False
        Show a progress bar labelled ``desc``.

    Returns
    -------
    ndarray of shape (n_samples, n_outputs), float32

    Examples
    --------
    >>> import torch
    >>> from sktransfer.inputs import as_samples
    >>> from sktransfer.backbones.preprocess import TensorPreprocess
    >>> samples = as_samples(np.ones((3, 2), dtype=np.float32), "tensor")
    >>> predict_batches(torch.nn.Identity(), samples, TensorPreprocess(), batch_size=2)
    array([[1., 1.],
           [1., 1.],
           [1., 1.]], dtype=float32)
    """
    device = resolve_device(device)
    batches = batch_order(samples, preprocess, batch_size)
    # Same-size image arrays travel to an accelerator as uint8 (a quarter of
    # the bytes of float32) and are resized and normalized there rather than
    # on a CPU core in the loader, where preprocessing runs otherwise.
    on_device = device.type != "cpu" and samples.kind in ("nchw", "nhwc")
    loader = torch.utils.data.DataLoader(
        samples, batch_sampler=batches, collate_fn=Collate(None if on_device else preprocess),
        num_workers=num_workers, pin_memory=device.type == "cuda",
        # The loader draws its workers' base seed from this generator, not
        # from torch's global RNG, which a prediction must leave alone.
        generator=torch.Generator())
    replica = inference_replica(module, device)
    out = None
    try:
        with _LayerTap(replica, layers) as tap, torch.inference_mode(), \
                autocast(device, amp_dtype):
            for idx, inputs in zip(batches, tqdm(loader, disable=not verbose, desc=desc,
                                                 unit="batch")):
                inputs = to_device(inputs, device)
                if on_device:
                    inputs = preprocess(inputs)
                result = replica(inputs)
                if layers:
                    result = dict(tap.outputs)
                if output is not None:
                    result = output(result, inputs)
                result = result.reshape(len(idx), -1).float().cpu().numpy()
                if out is None:
                    out = np.empty((len(samples), result.shape[1]), dtype=np.float32)
                out[idx] = result
    finally:
        # The replica holds this call's device copies of the weights: drop
        # them now, so parallel searches sharing a GPU do not hold its memory.
        del replica
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


class _LayerTap:
    """Forward hooks, on a call's own replica, that keep the named submodules' outputs."""

    def __init__(self, module, names):
        self.module = module
        self.names = list(names or ())
        self.outputs = {}
        self._handles = []

    def __enter__(self):
        for name in self.names:
            sub = self.module.get_submodule(name)
            self._handles.append(sub.register_forward_hook(self._keep(name)))
        return self

    def _keep(self, name):
        def hook(_module, _inputs, output):
            if isinstance(output, (tuple, list)):
                output = output[0]
            elif hasattr(output, "last_hidden_state"):
                output = output.last_hidden_state
            self.outputs[name] = output
        return hook

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.outputs.clear()

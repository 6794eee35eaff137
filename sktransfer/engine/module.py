"""The network an engine runs: a private copy of the fitted one, with the call built in.

An engine never runs the estimator's own module: it runs a private tree of
module objects (:func:`private_copy`), in eval mode, whose weights are the
fitted module's own tensors where they already sit where they must (on the
CPU a copy costs the module objects, not the weights) and copies where they
do not (on an accelerator, or in channels-last layout). The fitted module is
never moved, hooked or switched to eval, so the estimator stays read-only.

:class:`InferenceModule` wraps that copy with what a call computes beyond
the network (the outputs of chosen layers, a softmax, pooling), so that one
``forward`` is the whole computation: the thing ``torch.compile`` compiles
and the ONNX exporter exports.
"""

import copy
import itertools
import threading

import torch
from torch import nn


def private_copy(module, device, channels_last=False):
    """A new tree of ``module``'s submodules for an engine, in eval mode.

    Parameters
    ----------
    module : torch.nn.Module
        The fitted model; left untouched.
    device : torch.device or None
        Where the copy's weights live. Tensors of ``module`` already there
        are shared (tied weights stay tied), others are copied there once.
        None shares every tensor where it is.
    channels_last : bool, default=False
        Store 4-D weights (convolution kernels) in channels-last layout, a
        copy of each: with channels-last inputs, CPU and GPU convolution
        kernels run faster in it (``benchmarks/bench_engine.py``).

    Returns
    -------
    torch.nn.Module

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
    >>> copy_ = private_copy(net, torch.device("cpu"))
    >>> copy_[0].weight is net[0].weight, copy_.training, net.training
    (True, False, True)
    """
    memo = {}
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        memo[id(tensor)] = _placed(tensor, device, channels_last)
    return copy.deepcopy(module, memo).eval()


def _placed(tensor, device, channels_last):
    """``tensor`` itself if it is on ``device`` in the right layout, else such a copy."""
    if device is None:
        return tensor
    moved = tensor.detach()
    same_device = tensor.device == device or (
        device.index is None and tensor.device.type == device.type)
    if not same_device:
        moved = moved.to(device)
    if channels_last and moved.ndim == 4:
        moved = moved.contiguous(memory_format=torch.channels_last)
    if moved.device == tensor.device and moved.data_ptr() == tensor.data_ptr():
        return tensor  # already where and how it must be: shared, not copied
    if isinstance(tensor, nn.Parameter):
        return nn.Parameter(moved, requires_grad=tensor.requires_grad)
    return moved


#: What every ``nn.Module`` keeps in its ``__dict__`` for torch's own bookkeeping
#: (its parameters, buffers, submodules, hooks, ``training``): every other
#: entry is a plain attribute of the network.
BOOKKEEPING = frozenset(vars(nn.Module()))


def plain_attributes(module):
    """The names of ``module``'s own plain (non-tensor-registry) attributes, sorted.

    Attributes set in ``__init__`` or later (``self.scale = 2.0``, a config
    object, a list of sizes), not its parameters, buffers and submodules,
    and not torch's bookkeeping (hooks, ``training``). They can change what
    ``forward`` computes, so engines watch them and cache keys cover them.

    Examples
    --------
    >>> lin = nn.Linear(3, 2)
    >>> lin.scale = 100
    >>> plain_attributes(lin)
    ['in_features', 'out_features', 'scale']
    """
    return sorted(name for name in vars(module) if name not in BOOKKEEPING)


def uses_convolutions(module):
    """Whether ``module`` holds 2-D convolutions (so channels-last layout pays)."""
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


class InferenceModule(nn.Module):
    """``output(body(inputs), inputs)``, or the outputs of ``layers``, as one forward.

    Parameters
    ----------
    body : torch.nn.Module
        The engine's private copy of the network (see :func:`private_copy`).
    layers : list of str, optional
        Submodules of ``body`` whose outputs replace the network's output:
        ``output`` then receives a dict of them by name. They are gathered
        by forward hooks installed once on ``body``, which store each call's
        outputs in storage private to the calling thread, so threads sharing
        this module never see each other's batches.
    output : callable, optional
        ``output(result, inputs)``: what the call computes from the network's
        output (a softmax, pooled layers), in torch operations so that it
        compiles and exports with the network.
    channels_last : bool, default=False
        Give 4-D inputs to ``body`` in channels-last layout.

    Examples
    --------
    >>> body = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> net = InferenceModule(body, layers=["1"], output=lambda out, _: out["1"].sum(1))
    >>> net(torch.ones(5, 3)).shape
    torch.Size([5, 1])
    """

    def __init__(self, body, layers=None, output=None, channels_last=False):
        super().__init__()
        self.body = body
        self.layers = tuple(layers or ())
        self.output = output
        self.channels_last = channels_last
        self._taps = threading.local()
        for name in self.layers:
            body.get_submodule(name).register_forward_hook(_tap(self._taps, name))

    def forward(self, inputs):
        if self.channels_last and isinstance(inputs, torch.Tensor) and inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        if self.layers:
            self._taps.outputs = {}
        result = self.body(inputs)
        if self.layers:
            result = self._taps.outputs
            self._taps.outputs = None  # nothing of this batch outlives the call
        if self.output is not None:
            result = self.output(result, inputs)
        return result.reshape(result.shape[0], -1)


def _tap(taps, name):
    # The hook holds the thread-local storage, not the module: no reference
    # cycle keeps a discarded engine's (device) weights alive until gc runs.
    def hook(_module, _inputs, output):
        if isinstance(output, (tuple, list)):
            output = output[0]
        elif hasattr(output, "last_hidden_state"):
            output = output.last_hidden_state
        taps.outputs[name] = output
    return hook

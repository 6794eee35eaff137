"""Gradient checkpointing of a backbone for the length of a training call.

``gradient_checkpointing=True`` on a fine-tuner makes
:class:`~sktransfer.training.run.TrainingRun` train inside
:func:`checkpointing`: the backbone keeps fewer activations in the forward
pass and recomputes them in the backward pass (less memory, more compute),
and is left as it was found when the call ends, however it ends.

The backbone is asked, never tested for its family:

- a network that checkpoints itself the Hugging Face way (it has
  ``activation_checkpointing_enable``, or the older
  ``gradient_checkpointing_enable``, and ``supports_gradient_checkpointing``)
  is switched with those, non-reentrant;
- a network that has ``set_grad_checkpointing`` (timm's) with that;
- the parameter groups of anything else (torchvision, a user's module) have
  their forward run through :func:`torch.utils.checkpoint.checkpoint`.

Everything is non-reentrant: the reentrant variant gives no gradient to the
parameters of a checkpointed block whose input does not require one (the
block after a frozen group), and checkpoint's default ``preserve_rng_state``
replays dropout's draws, so the results are those of plain training.
"""

import contextlib
import sys
import warnings

import torch
from torch.utils.checkpoint import checkpoint

__all__ = ["checkpointing"]


@contextlib.contextmanager
def checkpointing(module, param_groups, enabled=True):
    """Turn gradient checkpointing on for ``module`` within the ``with`` block.

    Parameters
    ----------
    module : torch.nn.Module
        The backbone's network.
    param_groups : list of (str, list of str)
        Its parameter groups, ordered input to output, as ``(module name,
        [full parameter names])`` (a :class:`~sktransfer.backbones.Backbone`'s
        ``param_groups``). Outside the networks that checkpoint themselves,
        each group that is a whole submodule (not the root, and not the
        parameters registered directly on a container) is checkpointed, in
        training mode and where a gradient flows through it: a frozen group
        whose input needs no gradient runs plainly, and evaluation forwards
        are unchanged.
    enabled : bool, default=True
        False makes the block change nothing.

    Notes
    -----
    A group's recomputation in the backward pass leaves the running
    statistics of its normalization layers as the forward pass set them.
    Other state a forward writes (a module counting its calls) is written
    twice, and a group must not modify its input in place.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Sequential(nn.Linear(4, 8), nn.ReLU()),
    ...                     nn.Sequential(nn.Linear(8, 8), nn.ReLU()), nn.Linear(8, 1))
    >>> groups = [(name, [f"{name}.{p}" for p, _ in child.named_parameters()])
    ...           for name, child in net.named_children()]
    >>> calls = []
    >>> _ = net[1][0].register_forward_hook(lambda *args: calls.append(1))
    >>> with checkpointing(net, groups):
    ...     net(torch.randn(2, 4)).sum().backward()
    >>> len(calls)  # the block ran again in the backward pass
    2
    >>> net(torch.randn(2, 4)).sum().backward()
    >>> len(calls), "forward" in vars(net[1])  # once, as before the block
    (3, False)
    """
    if not enabled:
        yield
        return
    with contextlib.ExitStack() as stack:
        natives = []
        for sub in _outermost(module, _checkpoints_itself):
            # A model that cannot checkpoint itself has its groups checkpointed below.
            if stack.enter_context(_native(sub)):
                natives.append(sub)
        for sub in _group_modules(module, param_groups, natives):
            stack.enter_context(_wrapped_forward(sub))
        yield


# -- networks that checkpoint themselves ---------------------------------------

def _checkpoints_itself(sub):
    hf = (callable(getattr(sub, "activation_checkpointing_enable", None))
          or callable(getattr(sub, "gradient_checkpointing_enable", None)))
    return hf or callable(getattr(sub, "set_grad_checkpointing", None))


def _outermost(module, predicate):
    """The submodules of ``module`` (itself included) matching ``predicate``,
    leaving out those inside a matching one."""
    found = []
    for name, sub in module.named_modules():
        inside = any(not p or name == p or name.startswith(p + ".") for p, _ in found)
        if predicate(sub) and not inside:
            found.append((name, sub))
    return [sub for _, sub in found]


@contextlib.contextmanager
def _native(sub):
    """Switch ``sub``'s own checkpointing on and back; yields whether it could."""
    if callable(getattr(sub, "set_grad_checkpointing", None)):
        with _timm_style(sub):
            yield True
    elif getattr(sub, "supports_gradient_checkpointing", False):
        with _hugging_face_style(sub):
            yield True
    else:
        yield False


@contextlib.contextmanager
def _hugging_face_style(model):
    # The "activation_" names are transformers 5's; the "gradient_" ones
    # warn there and are all that earlier releases have.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        was_on = bool(getattr(model, "is_activation_checkpointing",
                              getattr(model, "is_gradient_checkpointing", False)))
    if was_on:  # the user's own setting, kept as it is
        yield
        return
    had_input_hook = getattr(model, "_require_grads_hook", None) is not None
    kwargs = {"use_reentrant": False}
    if callable(getattr(model, "activation_checkpointing_enable", None)):
        enable, disable = (model.activation_checkpointing_enable,
                           model.activation_checkpointing_disable)
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        enable, disable = model.gradient_checkpointing_enable, model.gradient_checkpointing_disable
        enable(gradient_checkpointing_kwargs=kwargs)
    if not had_input_hook and getattr(model, "_require_grads_hook", None) is not None:
        # enable() makes the embeddings' output require a gradient, which only
        # reentrant checkpointing needs; with frozen embeddings it would make
        # them keep activations for nothing, and disable() leaves it in place.
        model.disable_input_require_grads()
    try:
        yield
    finally:
        disable()


@contextlib.contextmanager
def _timm_style(model):
    was_on = getattr(model, "grad_checkpointing", False) is True
    if was_on:
        yield
        return
    # timm reads one process-wide switch for reentrant checkpointing (off
    # unless TIMM_REENTRANT_CKPT is set); reentrant would train no block
    # behind a frozen group, so it is held off for the call.
    config = sys.modules.get("timm.layers")
    reentrant = getattr(config, "use_reentrant_ckpt", None)
    before = reentrant() if callable(reentrant) else None
    if before:
        config.set_reentrant_ckpt(False)
    model.set_grad_checkpointing(True)
    try:
        yield
    finally:
        model.set_grad_checkpointing(False)
        if before:
            config.set_reentrant_ckpt(before)


# -- checkpointing by parameter group -------------------------------------------

def _group_modules(module, param_groups, natives):
    """The submodules that the groups own whole, outside and around no native model."""
    native_ids = {id(m) for m in natives}
    inside_native = {id(m) for n in natives for m in n.modules()}
    chosen = []
    for name, names in param_groups:
        if not name:  # the root: checkpointing all of it saves nothing
            continue
        try:
            sub = module.get_submodule(name)
        except AttributeError:  # a group a source named otherwise than by its module
            continue
        owned = {f"{name}.{p}" for p, _ in sub.named_parameters()}
        if set(names) != owned or id(sub) in inside_native:
            continue  # parameters set directly on a container, or a native model's part
        if any(id(m) in native_ids for m in sub.modules()):
            continue
        chosen.append(sub)
    return chosen


@contextlib.contextmanager
def _wrapped_forward(sub):
    own = sub.__dict__.get("forward")  # a forward already set on the instance
    sub.forward = _CheckpointedForward(sub, sub.forward)
    try:
        yield
    finally:
        if own is None:
            del sub.forward
        else:
            sub.forward = own


class _CheckpointedForward:
    """A module's forward run through ``checkpoint`` when it trains with gradients.

    An object rather than a closure: a module copied during training
    (``copy.deepcopy``) gets a forward bound to the copy.
    """

    def __init__(self, module, forward):
        self.module = module
        self.forward = forward

    def __call__(self, *args, **kwargs):
        module = self.module
        if not (module.training and torch.is_grad_enabled() and self._needs_grad(args, kwargs)):
            return self.forward(*args, **kwargs)
        calls = []

        def run(*inputs):
            if not calls:
                calls.append(True)
                return self.forward(*inputs, **kwargs)
            with _running_stats_kept(module):  # the recomputation
                return self.forward(*inputs, **kwargs)

        # Keyword arguments reach the forward through ``run``: checkpoint
        # reserves some names for itself.
        return checkpoint(run, *args, use_reentrant=False)

    def _needs_grad(self, args, kwargs):
        if any(p.requires_grad for p in self.module.parameters()):
            return True
        return any(isinstance(a, torch.Tensor) and a.requires_grad
                   for a in (*args, *kwargs.values()))


@contextlib.contextmanager
def _running_stats_kept(module):
    """Undo what a forward in training mode does to running statistics (BatchNorm's):
    the forward pass already updated them once."""
    saved = [(b, b.clone()) for m in module.modules()
             if getattr(m, "track_running_stats", False) for b in m.buffers(recurse=False)]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)

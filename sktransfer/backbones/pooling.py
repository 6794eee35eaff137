"""How an embedding ends: the global pool of an image network, the pooling of tokens.

``pooling="max"`` on an image backbone (without ``layers=``) swaps the
network's global average pool of its last feature map for a global max
pool. The swap is part of the architecture, so a backbone rebuilt from its
spec (a pickle, a saved model) re-applies it: :func:`image_global_pool`
reads it back from a module, :func:`set_image_global_pool` applies it, and
:func:`image_network_state` / :func:`image_network_from_state` are what the
image sources (torchvision, timm) save and rebuild of it.

Token states of a text encoder, ``(B, T, D)``, become one vector per text
by :func:`pool_tokens`, over the real (unmasked) tokens.

Which pooling a backbone's embedding takes is its family's business:
encoders that pool their own outputs (the Hugging Face families) are
:class:`PoolingEncoder` modules, and :func:`set_network_pooling` says what
``pooling=`` does to any other network. :func:`pool_layers` pools the
outputs of chosen layers (``layers=``), whatever the family.
"""

import torch
from torch import nn

IMAGE_POOLS = ("avg", "max")
#: sentence-transformers' pooling modes, in the order it concatenates them.
SENTENCE_POOLINGS = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
#: What ``pooling=`` may name for token states: ours ("avg" is "mean") and theirs.
TOKEN_POOLINGS = ("avg",) + SENTENCE_POOLINGS
#: Every ``pooling=`` of an estimator: "auto" is the model's own embedding, and
#: "cls+avg" an image transformer's class token and patch mean side by side.
POOLINGS = ("auto",) + TOKEN_POOLINGS + ("cls+avg",)


class PoolingEncoder:
    """A family's encoder that pools its own outputs (a mixin of ``nn.Module`` classes).

    :meth:`~sktransfer.backbones.Backbone.set_pooling` hands ``pooling=`` to
    it; any other network is pooled as :func:`set_network_pooling` says.

    Each encoder class defines ``set_pooling(pooling, spec=None)``: pool by
    ``pooling`` from now on, or raise a ValueError naming ``spec`` and the
    poolings it takes. A class that does not is refused when it is defined.

    Attributes
    ----------
    prefix_tokens : int or None
        For an image transformer, the class and register tokens before its
        patch tokens, which chosen layers' outputs are pooled apart from;
        None otherwise.
    """

    prefix_tokens = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not callable(getattr(cls, "set_pooling", None)):
            raise TypeError(f"{cls.__qualname__} is a PoolingEncoder without set_pooling"
                            "(pooling, spec=None)")


def set_network_pooling(module, modality, pooling, spec):
    """Make the embedding of a network that does not pool itself pool by ``pooling``.

    An image network ends in a global pool of its last feature map, which
    ``"max"`` replaces by a global max pool; any other network's forward
    output (a user's module on tensors, texts or waveforms) is already its
    embedding, so only ``"avg"`` (a no-op) applies: a pooling that would be
    ignored is refused.

    Parameters
    ----------
    module : torch.nn.Module
        Changed in place.
    modality : {"image", "text", "audio", "tensor"}
    pooling : str
        Not ``"auto"`` (which keeps the embedding as it is).
    spec : str
        Named in the errors.

    Raises
    ------
    ValueError
        For a pooling the network's embedding cannot take, naming the ones it can.
    """
    if pooling in ("avg", "mean"):
        return  # an image network's own pooling, or a module's own output
    if modality != "image":
        raise ValueError(f"pooling={pooling!r} has nothing to pool in {spec}: a "
                         f"module's forward output is its embedding. Use pooling='avg', or "
                         f"layers=[...] to pool chosen layers' outputs.")
    if pooling != "max":
        raise ValueError(f"pooling={pooling!r} pools token outputs, and "
                         f"{spec} is an image backbone whose embedding pools a "
                         f"feature map; use pooling='auto', 'avg' or 'max' (or layers=[...] "
                         f"of token outputs).")
    set_image_global_pool(module, pooling, spec)


def set_image_global_pool(module, pooling, spec):
    """Make an image network's embedding end in a global ``pooling`` pool, in place.

    timm models change it through ``reset_classifier(0, global_pool=...)``;
    other networks (torchvision) through their top-level
    ``nn.AdaptiveAvgPool2d(1)`` / ``nn.AdaptiveMaxPool2d(1)``: only a direct
    child counts, since pools inside blocks (squeeze-and-excitation) are not
    the embedding's pool.

    Parameters
    ----------
    module : torch.nn.Module
    pooling : {"avg", "max"}
    spec : str
        Named in the error raised when the network has no such pool.

    Examples
    --------
    >>> import torchvision
    >>> net = torchvision.models.resnet18(num_classes=2)
    >>> set_image_global_pool(net, "max", "torchvision:resnet18")
    >>> image_global_pool(net)
    'max'
    """
    if pooling not in IMAGE_POOLS:
        raise ValueError(f"an image embedding pools by one of {IMAGE_POOLS}; got {pooling!r}")
    if pooling == image_global_pool(module):
        return
    if _is_timm(module):
        try:
            module.reset_classifier(0, global_pool=pooling)
        except (AssertionError, ValueError, TypeError, KeyError, NotImplementedError) as exc:
            raise ValueError(f"pooling={pooling!r}: timm cannot give {spec} a global "
                             f"{pooling} pool ({exc!r}); use pooling='avg'") from exc
        return
    name = _top_level_global_pool(module)
    if name is None:
        raise ValueError(f"pooling={pooling!r} replaces the global average pool "
                         f"(nn.AdaptiveAvgPool2d(1)) of an image network, and {spec} has "
                         f"none; use pooling='avg', or layers=[...] with pooling={pooling!r} "
                         f"to pool chosen layers.")
    pool = nn.AdaptiveMaxPool2d(1) if pooling == "max" else nn.AdaptiveAvgPool2d(1)
    setattr(module, name, pool)


def image_global_pool(module):
    """``"max"`` when the network's embedding ends in a global max pool, else ``"avg"``."""
    if _is_timm(module):
        return "max" if getattr(module.global_pool, "pool_type", "avg") == "max" else "avg"
    name = _top_level_global_pool(module)
    if name is not None and isinstance(getattr(module, name), nn.AdaptiveMaxPool2d):
        return "max"
    return "avg"


def image_network_state(backbone):
    """What an image source saves beyond spec and weights: ``{"global_pool": ...}``.

    ``pooling="max"`` swapped the final pool: that is neither in the spec nor
    in the state dict (pools have no weights).

    Examples
    --------
    >>> from sktransfer.backbones import load_backbone
    >>> image_network_state(load_backbone("torchvision:resnet18", weights=None))
    {'global_pool': 'avg'}
    """
    if backbone.modality != "image":
        return {}
    return {"global_pool": image_global_pool(backbone.module)}


def image_network_from_state(module, network, spec):
    """``module`` (just built from ``spec``) with the pool :func:`image_network_state` saved."""
    set_image_global_pool(module, network.get("global_pool", "avg"), spec)
    return module


def _is_timm(module):
    return (type(module).__module__.startswith("timm.") and hasattr(module, "reset_classifier")
            and hasattr(module, "global_pool"))


def _top_level_global_pool(module):
    last = None
    for name, child in module.named_children():
        if (isinstance(child, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))
                and child.output_size in (1, (1, 1))):
            last = name
    return last


def token_pooling_modes(pooling):
    """``pooling`` (a name or a sequence of them) as a tuple of sentence-transformers modes.

    Examples
    --------
    >>> token_pooling_modes("avg"), token_pooling_modes("cls+avg")
    (('mean',), ('cls', 'mean'))
    """
    # "cls+avg", named for image transformers, is the same pair for tokens.
    modes = (pooling,) if isinstance(pooling, str) else tuple(pooling)
    modes = tuple(m for mode in modes for m in (("cls", "mean") if mode == "cls+avg" else (mode,)))
    unknown = [m for m in modes if m not in TOKEN_POOLINGS]
    if unknown or not modes:
        raise ValueError(f"pooling for token states must be one of {TOKEN_POOLINGS}; "
                         f"got {pooling!r}")
    return tuple("mean" if m == "avg" else m for m in modes)


def pool_tokens(hidden, mask, pooling, attention_mask=None):
    """Pool token states ``(B, T, D)`` into ``(B, D)`` over real (unmasked) tokens.

    Each mode computes what sentence-transformers' ``Pooling`` computes, for
    right- and left-padded batches alike; several modes are concatenated in
    the order given.

    Parameters
    ----------
    hidden : Tensor of shape (B, T, D)
    mask : Tensor of shape (B, T) or None
        The tokens to pool (the attention mask, less any prompt tokens).
    pooling : str or sequence of str
        ``"avg"``/``"mean"``, ``"cls"`` (the first pooled token), ``"max"``,
        ``"mean_sqrt_len_tokens"`` (sum over the square root of the count),
        ``"weightedmean"`` (weights 1, 2, ... from the first real token),
        ``"lasttoken"`` (the last pooled token, for decoder embedders).
    attention_mask : Tensor of shape (B, T), optional
        The full attention mask, where it differs from ``mask`` (positions
        for ``"weightedmean"`` count from the first real token).

    Examples
    --------
    >>> import torch
    >>> h = torch.tensor([[[1.0], [3.0], [100.0]]])
    >>> pool_tokens(h, torch.tensor([[1, 1, 0]]), "avg")
    tensor([[2.]])
    >>> pool_tokens(h, torch.tensor([[1, 1, 0]]), ("cls", "lasttoken"))
    tensor([[1., 3.]])
    """
    if mask is None:
        mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    if attention_mask is None:
        attention_mask = mask
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    # Accumulate sums in float32 under fp16/bf16, as sentence-transformers does.
    acc = torch.float32 if hidden.dtype in (torch.float16, torch.bfloat16) else hidden.dtype
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    out = []
    for mode in token_pooling_modes(pooling):
        if mode == "cls":
            first = mask.to(torch.int32).argmax(1)
            out.append(hidden[torch.arange(hidden.shape[0], device=hidden.device), first])
        elif mode == "max":
            out.append(hidden.masked_fill(weights == 0, torch.finfo(hidden.dtype).min).amax(1))
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            total = (hidden * weights).sum(1, dtype=acc)
            count = weights.sum(1, dtype=acc).clamp(min=1e-9)
            out.append((total / (count if mode == "mean" else count.sqrt())).to(hidden.dtype))
        elif mode == "weightedmean":
            start = attention_mask.to(torch.int32).argmax(1, keepdim=True)
            w = weights.to(acc) * (positions + 1 - start).to(acc).unsqueeze(-1)
            out.append(((hidden * w).sum(1) / w.sum(1).clamp(min=1e-9)).to(hidden.dtype))
        else:  # lasttoken
            last = (mask.to(torch.int32) * (positions + 1)).argmax(1)
            out.append((hidden * weights)[torch.arange(hidden.shape[0], device=hidden.device),
                                          last])
    return out[0] if len(out) == 1 else torch.cat(out, dim=-1)


#: What ``pooling=`` may name for an image transformer's tokens: its class
#: token, the mean or max of its patch tokens, or the class token and the patch
#: mean side by side (the features DINOv2's authors probe linearly).
IMAGE_TOKEN_POOLINGS = ("cls", "avg", "mean", "max", "cls+avg")


def pool_image_tokens(tokens, pooling, prefix_tokens, cls_norm=None):
    """Pool an image transformer's tokens ``(B, T, D)`` into ``(B, D)`` (``2 D`` for "cls+avg").

    Parameters
    ----------
    tokens : Tensor of shape (B, T, D)
    pooling : {"cls", "avg", "mean", "max", "cls+avg"}
        ``"cls"``: the class token; ``"avg"`` / ``"mean"`` and ``"max"``:
        over the patch tokens only (class, distillation and register tokens
        left out); ``"cls+avg"``: both, concatenated.
    prefix_tokens : int
        Tokens before the patches, the class token first; 0 for a network
        without one (SigLIP, Swin), which has no ``"cls"``.
    cls_norm : callable, optional
        Applied to the class token (CLIP normalizes it after the encoder).

    Examples
    --------
    >>> t = torch.tensor([[[9.0], [1.0], [2.0], [3.0]]])
    >>> pool_image_tokens(t, "cls+avg", prefix_tokens=2)
    tensor([[9.0000, 2.5000]])
    """
    if pooling not in IMAGE_TOKEN_POOLINGS:
        raise ValueError(f"image tokens pool by one of {IMAGE_TOKEN_POOLINGS}; got {pooling!r}")
    if "cls" in pooling and prefix_tokens < 1:
        raise ValueError(f"pooling={pooling!r} takes the class token, and this network has "
                         "none; use 'avg' or 'max' (over its patch tokens)")
    out = []
    if pooling in ("cls", "cls+avg"):
        first = tokens[:, 0]
        out.append(cls_norm(first) if cls_norm is not None else first)
    patches = tokens[:, prefix_tokens:]
    if pooling in ("avg", "mean", "cls+avg"):
        out.append(patches.mean(1))
    elif pooling == "max":
        out.append(patches.amax(1))
    return out[0] if len(out) == 1 else torch.cat(out, dim=-1)


def pool_layers(layers, pooling, outputs, inputs, prefix_tokens=None, channels_first=None):
    """The outputs of ``layers``, each pooled into ``(B, F)``, side by side.

    Parameters
    ----------
    layers : list of str
    pooling : str
        One of :data:`POOLINGS` (``"auto"`` is ``"avg"``).
    outputs : dict of {str: Tensor}
        Each layer's output by name.
    inputs : Tensor or dict of Tensor
        The batch the network was given: an audio batch's ``frame_mask``
        (frames that hold sound) or a text batch's ``attention_mask`` say
        which tokens to pool.
    prefix_tokens : int, optional
        For an image transformer, the class and register tokens before its
        patch tokens (pooled apart from them).
    channels_first : set of str, optional
        The layers whose three-axis outputs are a convolution's ``(B, C, T)``
        (the others' are ``(B, T, D)``), when the backbone knows them; else a
        three-axis output is ``(B, C, T)`` where its last axis alone matches
        the mask's.

    Examples
    --------
    >>> outputs = {"a": torch.ones(2, 3, 4, 4), "b": torch.ones(2, 5)}
    >>> pool_layers(["a", "b"], "max", outputs, torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 8])
    """
    mask = (inputs.get("frame_mask", inputs.get("attention_mask"))
            if isinstance(inputs, dict) else None)
    return torch.cat([_pool_layer(outputs[name], pooling, mask, prefix_tokens,
                                  None if channels_first is None else name in channels_first)
                      for name in layers], dim=1)


def _pool_layer(output, pooling, mask=None, prefix_tokens=None, channels_first=None):
    """Pool one layer's output into ``(B, F)``.

    ``(B, C, H, W)`` maps pool over space; ``(B, T, D)`` token sequences pool
    over tokens (masked by ``mask`` for text; for an image transformer, the
    patch tokens after its ``prefix_tokens`` class and register tokens);
    ``(B, F)`` passes through.
    """
    if pooling == "auto":
        pooling = "avg"
    if output.ndim == 2:
        return output
    if output.ndim == 3 and prefix_tokens is not None:
        return pool_image_tokens(output, pooling, prefix_tokens)
    if output.ndim == 3:
        if channels_first is None:
            # Guessed from the shapes: wrong where C happens to equal T.
            channels_first = mask is not None and output.shape[1] != mask.shape[1] == \
                output.shape[2]
        if channels_first:
            output = output.transpose(1, 2)  # a convolution's (B, C, T): pool its frames
        return pool_tokens(output, mask, pooling)
    if pooling not in ("avg", "mean", "max"):
        raise ValueError(f"pooling={pooling!r} needs token outputs (B, T, D); a layer gave "
                         f"shape {tuple(output.shape)}; use 'avg' or 'max'")
    flat = output.flatten(2)
    return flat.amax(2) if pooling == "max" else flat.mean(2)

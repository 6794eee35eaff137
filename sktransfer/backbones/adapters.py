"""Parameter-efficient adapters on a backbone, through Hugging Face's ``peft``.

``adapter="lora"`` (or any ``peft.PeftConfig``) on a fine-tuner puts peft's
adapter layers into the fitted backbone's own copy of the network
(:func:`attach_adapter`): peft does the adapting, nothing here re-implements
an adapter. The backbone then records

- ``adapter_config``: the config the layers were made from (a copy: peft
  writes into the config it is given);
- ``fixed``: the names of the pretrained parameters, which never train (the
  freezing of :mod:`sktransfer.training.freezing` leaves them frozen);
- its parameter groups with the adapter's parameters in the group of the
  layer they adapt (so per-group rates and ``freeze`` counts still apply).

Inference runs a copy with the adapters merged into the weights
(:func:`merged_network`), at the cost of the plain network; saving stores the
network without its adapters (:func:`base_network`) and the adapters'
tensors (:func:`adapter_tensors`) beside it.
"""

import copy
import re
import sys

from torch import nn

from ..engine.merge import has_adapters, merged_network, replace_module, tuner_layers

__all__ = ["ADAPTERS", "ADAPTER_KEY", "LORA_DEFAULTS", "adapter_tensors", "attach_adapter",
           "auto_targets", "base_network", "check_adapter", "has_adapters", "merged_network",
           "resolve_adapter", "restore_adapter"]

#: Stored tensors under this prefix are an adapter's (see ``backbones.base.backbone_state``).
ADAPTER_KEY = "adapter::"

#: The adapter names ``adapter=`` takes as a string.
ADAPTERS = ("lora",)

#: ``adapter="lora"``: peft's LoRA with these settings and the targets of
#: :func:`auto_targets`.
LORA_DEFAULTS = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0}

#: The attention projections of the transformer families sktransfer loads:
#: BERT-like and ViT encoders (query/key/value), CLIP, SigLIP, wav2vec2 and
#: Whisper towers (q_proj/k_proj/v_proj), T5 (q/k/v), timm's ViT, DeiT, EVA
#: and Swin (a fused qkv).
ATTENTION_PROJECTIONS = ("query", "key", "value", "q_proj", "k_proj", "v_proj", "q", "k",
                         "v", "qkv")


def _peft():
    try:
        import peft
    except ImportError:
        raise ImportError('adapters need Hugging Face\'s peft: pip install "sktransfer[peft]"'
                          ) from None
    return peft


def check_adapter(adapter):
    """Raise unless ``adapter`` is None, a name of :data:`ADAPTERS` or a ``peft.PeftConfig``.

    Examples
    --------
    >>> check_adapter(None), check_adapter("lora")
    (None, None)
    >>> check_adapter("qlora")
    Traceback (most recent call last):
    ...
    ValueError: adapter='qlora' is not one of ('lora',) nor a peft.PeftConfig instance (such as peft.LoraConfig(...))
    """
    if adapter is None or (isinstance(adapter, str) and adapter in ADAPTERS):
        return
    if not isinstance(adapter, str) and "peft" in sys.modules \
            and isinstance(adapter, sys.modules["peft"].PeftConfig):
        return
    raise ValueError(f"adapter={adapter!r} is not one of {ADAPTERS} nor a peft.PeftConfig "
                     "instance (such as peft.LoraConfig(...))")


def auto_targets(module):
    """The names of the layers ``target_modules="auto"`` adapts in ``module``.

    The attention projections (:data:`ATTENTION_PROJECTIONS`) where the
    network has any; else every linear layer (ConvNeXt's MLPs, a user's
    MLP); else none.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> auto_targets(net)
    ['0', '2']
    """
    linear = [name for name, sub in module.named_modules()
              if isinstance(sub, nn.Linear) and name]
    attention = [name for name in linear if name.rsplit(".", 1)[-1] in ATTENTION_PROJECTIONS]
    if attention:
        return sorted({name.rsplit(".", 1)[-1] for name in attention})
    return linear


def resolve_adapter(adapter, module):
    """A fresh ``peft.PeftConfig`` for ``adapter`` on ``module`` (the given one is never changed).

    Parameters
    ----------
    adapter : "lora" or peft.PeftConfig
    module : torch.nn.Module
        The network, for ``target_modules="auto"`` (or None, or unset).

    Raises
    ------
    ValueError
        For an unknown adapter, a config of a kind that does not adapt
        layers (prompt tuning), one that asks to train other modules
        (``modules_to_save``: the head always trains), or a network with no
        layer ``"auto"`` can adapt.
    """
    check_adapter(adapter)
    peft = _peft()
    if isinstance(adapter, str):
        config = peft.LoraConfig(**LORA_DEFAULTS, target_modules="auto")
    else:
        config = copy.deepcopy(adapter)
    if getattr(config, "is_prompt_learning", False):
        raise ValueError(f"adapter={type(adapter).__name__}(...) is a prompt-learning method, "
                         "which adds tokens rather than adapting layers; use a layer adapter "
                         "such as peft.LoraConfig, peft.IA3Config or peft.LoHaConfig")
    if getattr(config, "modules_to_save", None):
        raise ValueError(f"adapter sets modules_to_save={config.modules_to_save!r}; the "
                         "fine-tuner's head always trains, and the rest of the backbone "
                         "trains only through the adapter: leave modules_to_save unset")
    if getattr(config, "target_modules", None) in (None, "auto"):
        targets = auto_targets(module)
        if not targets:
            raise ValueError("adapter target_modules='auto' found no attention projection and "
                             "no linear layer in the backbone; pass a peft config whose "
                             "target_modules names the layers to adapt")
        config.target_modules = targets
    config.inference_mode = False
    return config


def attach_adapter(backbone, adapter):
    """Put ``adapter``'s layers into ``backbone.module`` (in place) and record them.

    Parameters
    ----------
    backbone : Backbone
        A fit's private backbone.
    adapter : "lora" or peft.PeftConfig

    Returns
    -------
    Backbone
        ``backbone``, with ``adapter_config``, ``fixed`` and regrouped
        ``param_groups``.

    Raises
    ------
    ValueError
        When the config's ``target_modules`` match no layer of the network.

    Examples
    --------
    >>> from sktransfer.backbones import load_backbone
    >>> bb = attach_adapter(load_backbone(nn.Sequential(nn.Linear(4, 8), nn.ReLU())), "lora")
    >>> sorted(n for n, p in bb.module.named_parameters() if n not in bb.fixed)
    ['0.lora_A.default.weight', '0.lora_B.default.weight']
    """
    peft = _peft()
    module = backbone.module
    if backbone.adapter_config is not None or has_adapters(module):
        raise ValueError(f"the backbone {backbone.spec} already holds an adapter (a model "
                         "fine-tuned with one, chained as the next backbone); use "
                         "adapter=None to train that adapter further")
    config = resolve_adapter(adapter, module)
    groups = backbone.param_groups
    try:
        peft.inject_adapter_in_model(config, module)
    except ValueError as exc:  # peft's NoMatchingPeftModuleError is one
        raise ValueError(f"adapter target_modules={config.target_modules!r} match no layer of "
                         f"{backbone.spec}: {exc}") from None
    params = dict(module.named_parameters())
    trainable = {name for name, p in params.items() if p.requires_grad}
    backbone.adapter_config = config
    backbone.fixed = frozenset(set(params) - trainable)
    backbone._param_groups = _regrouped(groups, params)
    return backbone


def exact_targets(config, module):
    """A copy of ``config`` naming exactly the layers of ``module`` it adapted.

    What a saved model stores: the full names of the adapted layers (matched
    exactly, never as patterns), whatever ``target_modules`` and
    ``exclude_modules`` said when the adapter was made.
    """
    exact = copy.copy(config)
    exact.target_modules = sorted(name for name, _ in tuner_layers(module))
    if hasattr(exact, "exclude_modules"):
        exact.exclude_modules = None
    if hasattr(exact, "feedforward_modules") and exact.feedforward_modules is not None:
        # IA3: which of the adapted layers scale their input (feedforward) rather
        # than their output, by exact name too.
        exact.feedforward_modules = sorted(
            name for name, layer in tuner_layers(module)
            if getattr(layer, "is_feedforward", False))
    return exact


#: The initialization of each stored type's layers: the cheap one (the stored
#: tensors replace it), whatever the file's config says.
_CHEAP_INIT = {"LORA": ("init_lora_weights", True), "LOHA": ("init_weights", True),
               "LOKR": ("init_weights", True), "IA3": ("init_ia3_weights", True)}


def restore_adapter(backbone, config, tensors):
    """Put the adapter ``config`` describes into ``backbone.module`` with its ``tensors``.

    What :func:`attach_adapter` did at fit time, for a stored model: the
    layers are made from the config (read from the file as plain data), and
    their tensors must be exactly those the file holds.

    Raises
    ------
    ValueError
        When the tensors are not exactly the adapter's (names or shapes).
    """
    peft = _peft()
    module = backbone.module
    # The layers are made on the meta device with the cheap initialization:
    # nothing is allocated or computed (a file asking for a huge rank, or an
    # expensive init) before the file's tensors are checked against them.
    cheap = copy.copy(config)
    field, value = _CHEAP_INIT.get(str(getattr(config.peft_type, "value", "")), (None, None))
    if field is not None:
        setattr(cheap, field, value)
    try:
        peft.inject_adapter_in_model(cheap, module, low_cpu_mem_usage=True)
    except (ValueError, re.error) as exc:
        raise ValueError(f"the saved adapter does not fit the saved network: {exc}") from None
    params = dict(module.named_parameters())
    trainable = {name: p for name, p in params.items() if p.requires_grad}
    if set(tensors) != set(trainable):
        raise ValueError(f"the saved adapter tensors do not match its config: missing "
                         f"{sorted(set(trainable) - set(tensors))[:5]}, unexpected "
                         f"{sorted(set(tensors) - set(trainable))[:5]}")
    wrong = [name for name, p in trainable.items() if tuple(tensors[name].shape) != p.shape]
    if wrong:
        raise ValueError(f"the saved adapter tensors do not fit: {wrong[:5]} have shapes "
                         f"{[tuple(tensors[n].shape) for n in wrong[:5]]}, the config makes "
                         f"{[tuple(trainable[n].shape) for n in wrong[:5]]}")
    module.load_state_dict({name: tensors[name].to(trainable[name].dtype) for name in tensors},
                           strict=False, assign=True)
    backbone.adapter_config = config
    backbone.fixed = frozenset(set(params) - set(trainable))
    return backbone


def _regrouped(groups, params):
    """``groups`` with the parameters' names after the adapter: each name in the group of
    the layer it belongs to (a pretrained weight moved under ``base_layer``, an
    adapter's under the layer it adapts)."""
    owner = {}
    for i, (_, names) in enumerate(groups):
        for name in names:
            owner[name.rpartition(".")[0]] = i
    regrouped = [(group, []) for group, _ in groups]
    for name in params:
        path = name.replace(".base_layer.", ".").rpartition(".")[0]
        while path not in owner and path:
            path = path.rpartition(".")[0]
        if path in owner:
            regrouped[owner[path]][1].append(name)
    return regrouped


def base_network(module):
    """``module`` without its adapters: a copy with each adapted layer as it was
    pretrained, or ``module`` itself where it has none."""
    if not has_adapters(module):
        return module
    plain = copy.deepcopy(module)
    for name, layer in tuner_layers(plain):
        replace_module(plain, name, layer.get_base_layer())
    # peft notes its config on the network it adapts: the adapter's, not the network's.
    plain.__dict__.pop("peft_config", None)
    return plain


def adapter_tensors(module, fixed):
    """The adapter's parameters in ``module``: those not in ``fixed``, by name."""
    return {name: p.detach() for name, p in module.named_parameters() if name not in fixed}

"""The Backbone: what every source (torchvision, timm, Hugging Face, a user's
module, a fitted estimator) resolves to, so the estimators never branch on
where a network came from; and the Backbone as plain data
(:func:`backbone_state` / :func:`backbone_from_state`), which is what its
pickles and ``sktransfer.save`` files hold.

The state functions live beside the class rather than in a module of their
own: the class's pickling needs them and they build the class, so two
modules would import each other.
"""

import copy
import functools

from torch import nn

from ..persistence.codec import VIEW_AS, array_to_tensor, dtype_name, tensor_to_array
from ..persistence.modules import (STATE_VERSION, check_state_version, module_from_state,
                                   module_state)
from ..persistence.trust import user_classes
from .adapters import (ADAPTER_KEY, adapter_tensors, base_network, exact_targets,
                       restore_adapter)
from .groups import ordered_param_groups
from .pooling import PoolingEncoder, pool_layers, set_network_pooling
from .reference import REFERENCE, check_origin, load_base, reference, tensors_state
from .registry import get_source, preprocess_from_state, preprocess_state, spec_source

MODALITIES = ("image", "text", "audio", "tensor")


class Backbone:
    """A network that maps a preprocessed batch to an embedding ``(B, D)``.

    Parameters
    ----------
    module : torch.nn.Module
        Its forward takes what ``preprocess`` returns and gives ``(B, D)``.
    preprocess : callable
        Turns a batch of raw samples (as produced by :mod:`sktransfer.inputs`)
        into the model input: a tensor or a dict of tensors.
    modality : {"image", "text", "audio", "tensor"}
        The kind of raw input the backbone takes.
    spec : str
        A readable name of where the network came from, such as
        ``"torchvision:resnet18"``.
    weights_id : str
        Identifies the weights the module started from (used in cache keys).
    out_dim : int or None
        Embedding width when known without running the network.
    input_channels : int or None
        Colour channels an image backbone expects (3 for RGB).

    Attributes
    ----------
    param_groups : list of (str, list of str)
        Parameter groups ordered from input to output, as
        ``(group_name, [parameter names])``; used to freeze the first N
        groups and to give earlier groups smaller learning rates.
    layer_names : list of str
        Names of the group modules, usable as ``layers=`` in
        :class:`~sktransfer.PretrainedFeatureTransformer`.

    Examples
    --------
    >>> from torch import nn
    >>> from sktransfer.backbones import load_backbone
    >>> bb = load_backbone(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    >>> bb.modality, bb.layer_names
    ('tensor', ['0', '2'])
    """

    #: The peft config of adapters put into ``module`` (see
    #: :mod:`sktransfer.backbones.adapters`), or None.
    adapter_config = None
    #: Names of the parameters that never train (the pretrained weights under an adapter).
    fixed = frozenset()
    #: How it was loaded (spec, weights, pooling, image size), or None; and its tensors'
    #: state then: what an adapted model's files refer to instead of holding the base
    #: while it is unchanged (see :mod:`.reference`).
    origin = None
    loaded_state = None

    def __init__(self, module, preprocess, modality, spec, weights_id="",
                 out_dim=None, input_channels=None, param_groups=None):
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        self.module = module
        self.preprocess = preprocess
        self.modality = modality
        self.spec = spec
        self.weights_id = weights_id
        self.out_dim = out_dim
        self.input_channels = input_channels
        self._param_groups = param_groups

    @property
    def param_groups(self):
        # Computed on access: lazy modules only know their sizes after a forward.
        if self._param_groups is not None:
            return self._param_groups
        return ordered_param_groups(self.module)

    @property
    def layer_names(self):
        return [name for name, _ in self.param_groups if name]

    def __repr__(self):
        return f"Backbone({self.spec!r}, modality={self.modality!r})"

    def use_prompt(self, prompt):
        """Prepend ``prompt`` to every text this backbone embeds, in place.

        Parameters
        ----------
        prompt : str or None
            The name of one of the model's prompts (a sentence-transformers
            model's ``config_sentence_transformers.json``), or the prompt
            text itself; ``""`` for none. ``None`` keeps the prompt the
            backbone has (the model's default prompt, when it names one).

        Raises
        ------
        ValueError
            For a prompt given to a backbone that takes no text.
        """
        if prompt is None:
            return
        use = getattr(self.preprocess, "use_prompt", None)
        if use is None:
            raise ValueError(f"prompt={prompt!r} is prepended to texts, and {self.spec} is "
                             f"a {self.modality} backbone; leave prompt=None")
        use(prompt)

    @property
    def takes_images(self):
        """Whether its raw samples are images (so image augmentation applies)."""
        return self.modality == "image"

    def set_pooling(self, pooling):
        """Make the embedding (what ``layers=None`` gives) pool by ``pooling``, in place.

        What a backbone's embedding can pool by is its family's business:
        the Hugging Face encoders pool their own outputs (see
        :class:`~sktransfer.backbones.pooling.PoolingEncoder`); an image
        network's global average pool of its last feature map becomes a max
        pool for ``"max"``; a module's forward output is its embedding.

        Parameters
        ----------
        pooling : str
            One of :data:`~sktransfer.backbones.pooling.POOLINGS`; ``"auto"``
            keeps the embedding the model's authors configured.

        Raises
        ------
        ValueError
            For a pooling this backbone cannot apply, naming it and the
            poolings it takes.

        Examples
        --------
        >>> from torch import nn
        >>> from sktransfer.backbones import load_backbone
        >>> load_backbone(nn.Linear(4, 2)).set_pooling("max")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: pooling='max' has nothing to pool in module:Linear: ... Use pooling='avg', ...
        """
        if pooling == "auto":
            return
        if isinstance(self.module, PoolingEncoder):
            self.module.set_pooling(pooling, self.spec)
        else:
            set_network_pooling(self.module, self.modality, pooling, self.spec)

    def layer_pooling(self, layers, pooling):
        """``output(outputs, inputs)``: the outputs of ``layers`` pooled by ``pooling``.

        For :class:`~sktransfer.engine.module.InferenceModule`: each layer's
        output pooled into ``(B, F)`` over its spatial or token axes (for an
        image transformer, its patch tokens apart from its class and register
        tokens), side by side in the order given.

        Parameters
        ----------
        layers : list of str
            Module names among :attr:`layer_names`.
        pooling : str
            One of :data:`~sktransfer.backbones.pooling.POOLINGS` (``"auto"``
            is the mean).

        Returns
        -------
        callable
        """
        prefix = self.module.prefix_tokens if isinstance(self.module, PoolingEncoder) else None
        known = getattr(self.module, "channels_first_layers", None)
        return functools.partial(pool_layers, list(layers), pooling, prefix_tokens=prefix,
                                 channels_first=None if known is None else known(layers))

    def copy(self, share_parameters=False):
        """A deep copy whose module shares no tensors with this one.

        ``share_parameters=True``: the copy's parameters are new parameter
        objects over the same memory (their ``requires_grad`` and ``.data``
        are the copy's own; buffers are copied). For a fit that never writes
        the pretrained weights (under an adapter, which freezes them): one
        copy of a large network in memory instead of two.
        """
        if not share_parameters:
            return copy.deepcopy(self)
        memo = {id(p): nn.Parameter(p.data, requires_grad=p.requires_grad)
                for p in self.module.parameters()}
        return copy.deepcopy(self, memo)

    def __deepcopy__(self, memo):
        # Copy the attributes directly rather than through the pickle form
        # below (which rebuilds the network): the same result, faster, and a
        # search copies a backbone once per fit.
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone

    # Pickling: the state is plain data (see backbone_state below): a config
    # of specs and constants, the weights as numpy arrays (so a model dumped
    # from a GPU loads on a machine without one) and the class objects of
    # the user's own modules (so cloudpickle ships a class defined in
    # __main__, and an audit such as skops lists them). No pickled module
    # object, no torch.save bytes: unpickling runs no code hidden inside.
    def __getstate__(self):
        config, tensors = backbone_state(self)
        classes = (user_classes(base_network(self.module))
                   if config["network"]["kind"] == "module" else {})
        return {"config": config, "tensors": tensors, "classes": classes}

    def __setstate__(self, state):
        # The user chose to load this pickle, so its classes are trusted.
        rebuilt = backbone_from_state(state["config"], state["tensors"],
                                      classes=state.get("classes"))
        self.__dict__.update(rebuilt.__dict__)


def backbone_state(backbone):
    """Describe a :class:`Backbone` as config + arrays.

    Parameters
    ----------
    backbone : Backbone

    Returns
    -------
    config : dict
        ``spec``, ``modality``, ``weights_id``, ``out_dim``,
        ``input_channels``, ``param_groups`` (None when computed from the
        module), ``preprocess`` (its constants) and ``network``: for
        ``"torchvision:"``, ``"timm:"`` and ``"hf:"`` specs
        ``{"kind": "spec", ...}`` (what rebuilds the architecture, as its
        source describes it: for Hugging Face also the model config), for
        any other module ``{"kind": "module", "module": <module_state
        config>}``; for an adapted network whose pretrained base is
        unchanged since it was loaded, ``{"kind": "reference", ...}``
        (:mod:`~sktransfer.backbones.reference`: the base is loaded again
        from ``origin``, how it was loaded, and checked by ``origin``'s
        digest); ``adapter``: the adapter's config, when it has one.
    tensors : dict of {str: numpy.ndarray}
        The module's state dict as CPU arrays (for modules: as
        :func:`~sktransfer.persistence.modules.module_state` gives them),
        without the base's under a reference; an adapter's under
        ``"adapter::"`` names.

    Examples
    --------
    >>> from sktransfer.backbones import load_backbone
    >>> bb = load_backbone("torchvision:resnet18", weights=None, image_size=32)
    >>> config, tensors = backbone_state(bb)
    >>> config["network"]["kind"], config["preprocess"]["crop_size"]
    ('spec', 32)
    >>> backbone_from_state(config, tensors).preprocess.crop_size
    32
    """
    source = spec_source(backbone.spec)
    # An adapted network is stored as it was pretrained, its adapter beside it.
    module = base_network(backbone.module)
    found = reference(backbone, module)
    if found is not None:
        # The pretrained base as a reference checked by digest: no tensor of it is stored.
        network, tensors = _reference_state(module), {}
    elif source is not None:
        network, tensors = _spec_network_state(backbone, *source, module=module)
    else:
        module_config, tensors = module_state(module)
        network = {"kind": "module", "module": module_config}
    groups = backbone.__dict__.get("_param_groups")
    config = {
        "version": STATE_VERSION,
        "spec": backbone.spec,
        "modality": backbone.modality,
        "weights_id": backbone.weights_id,
        "out_dim": None if backbone.out_dim is None else int(backbone.out_dim),
        "input_channels": (None if backbone.input_channels is None
                           else int(backbone.input_channels)),
        "param_groups": None if groups is None else [[g, list(n)] for g, n in groups],
        "preprocess": preprocess_state(backbone.preprocess),
        "network": network,
    }
    if found is not None:
        config["origin"] = found
    if backbone.adapter_config is not None:
        from .adapter_config import config_state  # needs peft, as the adapter did

        config["adapter"] = config_state(exact_targets(backbone.adapter_config,
                                                       backbone.module))
        for name, tensor in adapter_tensors(backbone.module, backbone.fixed).items():
            tensors[ADAPTER_KEY + name] = tensor_to_array(tensor)
    return config, tensors


def backbone_from_state(config, tensors, *, classes=None, trusted=()):
    """Rebuild the :class:`Backbone` :func:`backbone_state` described.

    String specs are rebuilt by their source with random weights (no
    download, no original directory needed), then the carried state dict is
    loaded strictly; it holds tensors only. Other modules are rebuilt with
    :func:`~sktransfer.persistence.modules.module_from_state`.

    Parameters
    ----------
    config, tensors
        As returned by :func:`backbone_state`.
    classes, trusted
        As for :func:`~sktransfer.persistence.modules.module_from_state`
        (user modules only).

    Returns
    -------
    Backbone

    Raises
    ------
    UntrustedTypeError
        When a user module's classes are neither given nor trusted.
    """
    check_state_version(config, "backbone")
    network = config["network"]
    adapter = {k[len(ADAPTER_KEY):]: v for k, v in tensors.items() if k.startswith(ADAPTER_KEY)}
    tensors = {k: v for k, v in tensors.items() if not k.startswith(ADAPTER_KEY)}
    # The adapter's config is checked before any network is built or loaded.
    adapter_config = None
    if config.get("adapter") is not None:
        from .adapter_config import config_from_state  # needs peft, as the adapter did

        adapter_config = config_from_state(config["adapter"])
    elif adapter or network["kind"] == REFERENCE:
        raise ValueError("the saved backbone holds adapter tensors or a base reference but "
                         "no adapter config")
    if network["kind"] == REFERENCE:
        if tensors:
            raise ValueError("the saved backbone refers to its base network and also holds "
                             f"its tensors ({sorted(tensors)[:3]}...)")
        found = check_origin(config.get("origin"))
        module = _network_from_reference(network, found)
        loaded = tensors_state(module)
    elif network["kind"] == "spec":
        module = _spec_network_from_state(network, tensors)
    else:
        module = module_from_state(network["module"], tensors, classes=classes, trusted=trusted)
    groups = config.get("param_groups")
    backbone = Backbone(
        module, preprocess_from_state(config["preprocess"]), config["modality"],
        config["spec"], config.get("weights_id", ""), out_dim=config.get("out_dim"),
        input_channels=config.get("input_channels"),
        param_groups=None if groups is None else [(g, list(n)) for g, n in groups],
    )
    if network["kind"] == REFERENCE:
        # Stored by reference again while the base is unchanged.
        backbone.origin = {k: v for k, v in found.items() if k != "digest"}
        backbone.loaded_state = loaded
    if adapter_config is not None:
        restore_adapter(backbone, adapter_config,
                        {k: array_to_tensor(v) for k, v in adapter.items()})
    return backbone


def _modes(module):
    """Which submodules are in training mode and which parameters are frozen, by name.

    Per submodule and per parameter: a fine-tuner may have frozen some, and a
    wrapper may be in training mode around an eval model.
    """
    return {"training": [n for n, m in module.named_modules() if m.training],
            "frozen": [n for n, p in module.named_parameters() if not p.requires_grad]}


def _set_modes(module, network):
    frozen = set(network.get("frozen", ()))
    for pname, param in module.named_parameters():
        param.requires_grad_(pname not in frozen)
    training = set(network.get("training", ()))
    for mname, sub in module.named_modules():
        sub.training = mname in training


def _reference_state(base):
    """The stored network of an adapted backbone whose ``base`` is a reference."""
    return {"kind": REFERENCE, **_modes(base)}


def _network_from_reference(network, found):
    """The base :func:`load_base` loads, in the stored modes (the adapter goes in next)."""
    module = load_base(found).module
    _set_modes(module, network)
    return module


def _spec_network_state(backbone, source, name, module):
    """A spec network (``module``: the backbone's, or its copy without adapters): what
    its source adds, which parts train, and the state dict."""
    network = {"kind": "spec", "source": source, "name": name, **_modes(module)}
    network.update(get_source(source).network_state(backbone))
    state = module.state_dict()
    tensors = {k: tensor_to_array(v) for k, v in state.items()}
    # The dtypes numpy lacks travel as integers: their names say how to view them back.
    network["dtypes"] = {k: dtype_name(v.dtype) for k, v in state.items() if v.dtype in VIEW_AS}
    return network, tensors


def _spec_network_from_state(network, tensors):
    source, name = network["source"], network["name"]
    module = get_source(source).network_from_state(name, network)
    dtypes = network.get("dtypes", {})
    state = {k: array_to_tensor(v, dtypes.get(k)) for k, v in tensors.items()}
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"the saved weights do not fit {source}:{name} as this version builds it: "
            f"missing keys {result.missing_keys[:5]}, unexpected keys "
            f"{result.unexpected_keys[:5]}"
        )
    _set_modes(module, network)
    return module


def replace_last_linear(model):
    """Replace the last ``nn.Linear`` (the classifier) with ``nn.Identity``.

    Returns ``(name, in_features)``: where the classifier was and the
    embedding width.
    """
    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = name
    if last is None:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear classifier to remove; pass the "
            "model as an nn.Module whose forward already returns the embedding."
        )
    parent_name, _, child = last.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    in_features = getattr(parent, child).in_features
    setattr(parent, child, nn.Identity())
    return last, in_features

"""The Backbone: what every source (torchvision, timm, Hugging Face, a user's
module, a fitted estimator) resolves to, so the estimators never branch on
where a network came from."""

import copy

from torch import nn
from torch.nn.parameter import is_lazy


MODALITIES = ("image", "text", "tensor")


class Backbone:
    """A network that maps a preprocessed batch to an embedding ``(B, D)``.

    Parameters
    ----------
    module : torch.nn.Module
        Its forward takes what ``preprocess`` returns and gives ``(B, D)``.
    preprocess : callable
        Turns a batch of raw samples (as produced by :mod:`sktransfer.inputs`)
        into the model input: a tensor or a dict of tensors.
    modality : {"image", "text", "tensor"}
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

    def copy(self):
        """A deep copy whose module shares no tensors with this one."""
        return copy.deepcopy(self)

    def __deepcopy__(self, memo):
        # Copy the attributes directly rather than through the pickle form
        # below (which rebuilds the network): the same result, faster, and a
        # search copies a backbone once per fit.
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone

    # Pickling: the state is plain data (see backbones/state.py): a config of
    # specs and constants, the weights as numpy arrays (so a model dumped
    # from a GPU loads on a machine without one) and the class objects of
    # the user's own modules (so cloudpickle ships a class defined in
    # __main__, and an audit such as skops lists them). No pickled module
    # object, no torch.save bytes: unpickling runs no code hidden inside.
    def __getstate__(self):
        from .state import backbone_state, user_classes

        config, tensors = backbone_state(self)
        classes = user_classes(self.module) if config["network"]["kind"] == "module" else {}
        return {"config": config, "tensors": tensors, "classes": classes}

    def __setstate__(self, state):
        from .state import backbone_from_state

        # The user chose to load this pickle, so its classes are trusted.
        rebuilt = backbone_from_state(state["config"], state["tensors"],
                                      classes=state.get("classes"))
        self.__dict__.update(rebuilt.__dict__)


def ordered_param_groups(module, max_share=0.3):
    """Split ``module``'s parameters into groups ordered input -> output.

    Starts from the top-level children, in registration order (for
    sequential networks and for torchvision, timm and Hugging Face models,
    the order data flows), and opens any child that holds more than
    ``max_share`` of all parameters and is a container of blocks (it has a
    child with children of its own), so that a network with one big
    ``encoder`` or ``layer4`` still gets a group per block, while a block of
    plain layers stays one group. Parameters registered directly on a
    container become a group named after it.

    Returns
    -------
    list of (str, list of str)
        ``(module name, [full parameter names])`` for every group that holds
        parameters.

    Examples
    --------
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(2, 4), nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1)))
    >>> [name for name, _ in ordered_param_groups(net)]
    ['0', '1']
    """
    def numel(params):
        return sum(0 if is_lazy(p) else p.numel() for p in params)

    total = numel(module.parameters()) or 1

    def has_params(mod):
        return any(True for _ in mod.parameters())

    def is_block_container(mod):
        # Most of its parametrized children are blocks with children of their
        # own (resnet's layer4, BERT's encoder), unlike a block of plain layers.
        kids = [c for c in mod.children() if has_params(c)]
        return sum(any(True for _ in c.children()) for c in kids) * 2 >= len(kids)

    groups = []

    def visit(prefix, mod):
        direct = [f"{prefix}{n}" for n, _ in mod.named_parameters(recurse=False)]
        if direct:
            groups.append((prefix.rstrip("."), direct))
        for name, child in mod.named_children():
            if not has_params(child):
                continue
            full = f"{prefix}{name}"
            size = numel(child.parameters())
            if size > max_share * total and is_block_container(child):
                visit(full + ".", child)
            else:
                groups.append((full, [f"{full}.{n}" for n, _ in child.named_parameters()]))

    visit("", module)
    return groups


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

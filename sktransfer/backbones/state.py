"""A network as plain data: a JSON-able config plus named numpy arrays.

This is what pickles (and ``sktransfer.save`` files) hold instead of a
pickled module object, so that reading them runs no code hidden inside an
inner ``torch.save`` pickle, and an audit (``skops.io.get_untrusted_types``)
sees the classes that really run.

- :func:`module_state` / :func:`module_from_state`: any ``nn.Module`` (a
  user's network, a head, the L2-SP penalty) as a tree of
  ``{"class", "attrs", "children", "parameters", "buffers"}``, rebuilt
  without running a constructor.
- :func:`backbone_state` / :func:`backbone_from_state`: a
  :class:`~sktransfer.backbones.base.Backbone`. String specs
  (``"torchvision:.."``, ``"timm:.."``, ``"hf:.."``) are rebuilt from the
  spec and the state dict is loaded strictly; other modules go through
  :func:`module_state`.
- :class:`PickledModule`: an ``nn.Module`` held in an estimator's pickled
  state as that data (see :func:`pack_modules`).

Classes are named ``"<module>.<qualname>"``. When rebuilding, a name is
resolved from ``classes`` (class objects carried inside a pickle the user
chose to load) or imported only if trusted: ``torch.nn``'s own modules,
sktransfer's own, and the names passed as ``trusted``. Anything else raises
:class:`UntrustedTypeError`.
"""

import importlib
import os
import tempfile

import numpy as np
import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter, is_lazy
from torch.utils.hooks import RemovableHandle

from .pooling import image_global_pool, set_image_global_pool

#: Class name prefixes importable without being listed in ``trusted``.
TRUSTED_PREFIXES = ("torch.nn.", "sktransfer.")

#: Version of the config layout, checked when rebuilding.
STATE_VERSION = 1

# What nn.Module.__init__ puts in __dict__: torch's bookkeeping, rebuilt by
# nn.Module.__init__ rather than carried ("training" is carried on its own).
_MODULE_INTERNALS = frozenset(vars(nn.Module()))

# Tensor dtypes numpy cannot hold: carried as same-width integers.
_VIEW_AS = {torch.bfloat16: torch.int16}


class UntrustedTypeError(TypeError):
    """A state names classes that are neither given nor trusted.

    Attributes
    ----------
    names : list of str
        Every untrusted class name, sorted.
    """

    def __init__(self, names):
        self.names = sorted(set(names))
        super().__init__(
            f"refusing to import untrusted classes {self.names}: a saved model names "
            "them, and importing them would run their code. If you trust where the "
            f"model came from, pass trusted={self.names!r}."
        )


# -- class names -------------------------------------------------------------

def class_name(cls):
    """``"<module>.<qualname>"`` of a class.

    Examples
    --------
    >>> from torch import nn
    >>> class_name(nn.Linear)
    'torch.nn.modules.linear.Linear'
    """
    return f"{cls.__module__}.{cls.__qualname__}"


def is_trusted(name, trusted=()):
    """True when ``name`` may be imported: torch.nn's, sktransfer's or listed.

    Examples
    --------
    >>> is_trusted("torch.nn.modules.linear.Linear"), is_trusted("evil.Payload")
    (True, False)
    """
    return name in set(trusted) or name.startswith(TRUSTED_PREFIXES)


def _import_class(name):
    """Import ``"<module>.<qualname>"``, trying the longest module path first."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        if isinstance(obj, type):
            return obj
        break
    raise ImportError(
        f"cannot import class {name!r}: its module is not installed here, or it was "
        "defined where it cannot be imported (inside a function, in a script's "
        "__main__); pickles carry such classes with them, files cannot."
    )


def resolve_classes(names, classes=None, trusted=()):
    """Map every class name to a class object, refusing untrusted ones.

    Parameters
    ----------
    names : iterable of str
    classes : dict of {str: type}, optional
        Class objects to use as they are (the user trusted where they came
        from, such as the pickle that carried them).
    trusted : iterable of str
        Extra class names that may be imported.

    Returns
    -------
    dict of {str: type}

    Raises
    ------
    UntrustedTypeError
        Listing every name that is neither in ``classes`` nor trusted.
    """
    classes = dict(classes or {})
    untrusted = [n for n in names if n not in classes and not is_trusted(n, trusted)]
    if untrusted:
        raise UntrustedTypeError(untrusted)
    return {n: classes[n] if n in classes else _import_class(n) for n in set(names)}


def class_names(config):
    """Every class name a module or backbone config refers to, sorted.

    The save format can check these against what the user trusts before
    rebuilding anything.
    """
    found = set()

    def visit(node):
        if isinstance(node, dict):
            if isinstance(node.get("class"), str) and "children" in node:
                found.add(node["class"])
            if isinstance(node.get("__class__"), str) and len(node) == 1:
                found.add(node["__class__"])
            for value in node.values():
                visit(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                visit(value)

    visit(config)
    return sorted(found)


def user_classes(module):
    """``{name: class}`` of the classes in ``module`` that are not trusted by default.

    These are what a pickle carries as class objects (so that cloudpickle
    ships a class defined in ``__main__`` by value, and an audit lists it).
    """
    found = {}
    for sub in module.modules():
        for cls in [type(sub)] + [v for v in vars(sub).values() if isinstance(v, type)]:
            name = class_name(cls)
            if not is_trusted(name):
                found[name] = cls
    return found


# -- tensors <-> numpy arrays --------------------------------------------------

def dtype_name(dtype):
    """``"float32"`` for ``torch.float32``."""
    return str(dtype).removeprefix("torch.")


def tensor_to_array(tensor):
    """A detached CPU numpy array of ``tensor`` (dtypes numpy lacks as integers).

    Examples
    --------
    >>> import torch
    >>> tensor_to_array(torch.ones(2, dtype=torch.bfloat16)).dtype
    dtype('int16')
    """
    tensor = tensor.detach().cpu()
    if tensor.dtype in _VIEW_AS:
        tensor = tensor.view(_VIEW_AS[tensor.dtype])
    return tensor.numpy()


def array_to_tensor(array, dtype=None):
    """The tensor :func:`tensor_to_array` was made from (``dtype``: its name).

    Examples
    --------
    >>> import torch
    >>> t = torch.tensor([1.5, -2.0], dtype=torch.bfloat16)
    >>> array_to_tensor(tensor_to_array(t), "bfloat16").equal(t)
    True
    """
    array = np.asarray(array)
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, copy=True, order="C")  # torch needs its own memory
    tensor = torch.from_numpy(array)
    if dtype is not None:
        wanted = getattr(torch, dtype)
        tensor = tensor.view(wanted) if wanted in _VIEW_AS else tensor.to(wanted)
    return tensor


# -- attributes ------------------------------------------------------------------

def _encode(value, key, tensors):
    """A JSON-able form of an attribute; tensors and arrays go to ``tensors[key]``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, tuple) and type(value) in (tuple, torch.Size):
        return {"__tuple__": [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: _encode(v, f"{key}.{k}", tensors) for k, v in value.items()}}
    if isinstance(value, torch.dtype):
        return {"__dtype__": dtype_name(value)}
    if isinstance(value, torch.device):
        return {"__device__": str(value)}
    if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
        tensors[key] = tensor_to_array(value)
        return {"__tensor__": key, "dtype": dtype_name(value.dtype)}
    if isinstance(value, np.ndarray) and value.dtype != object:
        tensors[key] = value
        return {"__array__": key}
    if isinstance(value, type):
        return {"__class__": class_name(value)}
    # A function, an enum, a user object: kept as is for pickling; the save
    # format refuses it by name (see non_json_values).
    return {"__object__": value}


def _decode(value, tensors, classes):
    if isinstance(value, list):
        return [_decode(v, tensors, classes) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tuple__" in value:
        return tuple(_decode(v, tensors, classes) for v in value["__tuple__"])
    if "__dict__" in value:
        return {k: _decode(v, tensors, classes) for k, v in value["__dict__"].items()}
    if "__dtype__" in value:
        return getattr(torch, value["__dtype__"])
    if "__device__" in value:
        return torch.device(value["__device__"])
    if "__tensor__" in value:
        return array_to_tensor(tensors[value["__tensor__"]], value["dtype"])
    if "__array__" in value:
        return np.array(tensors[value["__array__"]])
    if "__class__" in value:
        return classes[value["__class__"]]
    if "__object__" in value:
        return value["__object__"]
    raise ValueError(f"not an encoded attribute: {value!r}")


def non_json_values(config, path="config"):
    """Where ``config`` holds values JSON cannot (functions, user objects, bytes).

    Returns
    -------
    list of str
        A readable path per value, such as
        ``"config['children']['0']['attrs']['fn']: function"``.

    Examples
    --------
    >>> from torch import nn
    >>> non_json_values(module_state(nn.Linear(2, 1))[0])
    []
    """
    if config is None or isinstance(config, (bool, int, float, str)):
        return []
    if isinstance(config, list):
        return [p for i, v in enumerate(config) for p in non_json_values(v, f"{path}[{i}]")]
    if isinstance(config, dict) and all(isinstance(k, str) for k in config):
        if "__object__" in config:
            return [f"{path}: {type(config['__object__']).__name__}"]
        return [p for k, v in config.items() for p in non_json_values(v, f"{path}[{k!r}]")]
    return [f"{path}: {type(config).__name__}"]


def is_json_able(config):
    """True when ``config`` round-trips through JSON unchanged.

    Examples
    --------
    >>> from torch import nn
    >>> is_json_able(module_state(nn.Sequential(nn.Linear(2, 1), nn.ReLU()))[0])
    True
    """
    return not non_json_values(config)


def check_json_able(config, what="the model"):
    """Raise a TypeError naming every value of ``config`` JSON cannot hold."""
    bad = non_json_values(config)
    if bad:
        raise TypeError(
            f"{what} holds values that cannot be written as JSON: {bad}. Make them "
            "plain attributes (numbers, strings, lists, tensors), or use pickle/joblib "
            "for this model."
        )


# -- modules -----------------------------------------------------------------------

def module_state(module):
    """Describe ``module`` as a config tree and its tensors as numpy arrays.

    Parameters
    ----------
    module : torch.nn.Module

    Returns
    -------
    config : dict
        ``{"class": "<module>.<qualname>", "training": bool, "attrs": {...},
        "children": {name: subtree or None}, "parameters": [...],
        "buffers": [...]}``. ``attrs`` holds the module's own attributes
        (torch's bookkeeping and hook handles left out), encoded so that JSON
        keeps them exactly (tuples, dtypes, classes are tagged); values JSON
        cannot hold are kept as ``{"__object__": value}`` for pickling (see
        :func:`non_json_values`). Parameter and buffer entries give
        ``name``, ``dtype``, ``requires_grad`` / ``persistent``, or
        ``same_as`` (a tensor shared with an earlier name), ``lazy`` (not yet
        initialized) or ``none``.
    tensors : dict of {str: numpy.ndarray}
        Full state-dict names to CPU arrays (non-persistent buffers and
        tensor attributes included). Arrays may share memory with the
        module: copy them before changing the module if that matters.

    Examples
    --------
    >>> from torch import nn
    >>> config, tensors = module_state(nn.Sequential(nn.Linear(2, 3)))
    >>> config["children"]["0"]["class"], sorted(tensors)
    ('torch.nn.modules.linear.Linear', ['0.bias', '0.weight'])
    """
    tensors = {}
    config = _describe(module, "", tensors, {})
    config["version"] = STATE_VERSION
    return config, tensors


def _describe(module, prefix, tensors, seen):
    def entry(name, tensor, **extra):
        full = prefix + name
        if tensor is None:
            return {"name": name, "none": True}
        if id(tensor) in seen:
            return {"name": name, "same_as": seen[id(tensor)]}
        seen[id(tensor)] = full
        if is_lazy(tensor):
            return {"name": name, "lazy": True, **extra}
        tensors[full] = tensor_to_array(tensor)
        return {"name": name, "dtype": dtype_name(tensor.dtype), **extra}

    params = [entry(n, p, requires_grad=bool(p is not None and p.requires_grad))
              for n, p in module._parameters.items()]
    buffers = [entry(n, b, persistent=n not in module._non_persistent_buffers_set)
               for n, b in module._buffers.items()]
    attrs = {k: _encode(v, prefix + k, tensors) for k, v in vars(module).items()
             if k not in _MODULE_INTERNALS and not isinstance(v, RemovableHandle)}
    children = {n: None if c is None else _describe(c, f"{prefix}{n}.", tensors, seen)
                for n, c in module._modules.items()}
    return {"class": class_name(type(module)), "training": bool(module.training),
            "attrs": attrs, "children": children, "parameters": params, "buffers": buffers}


def module_from_state(config, tensors, *, classes=None, trusted=()):
    """Rebuild the module :func:`module_state` described, running no constructor.

    Each module is made with ``cls.__new__(cls)`` and ``nn.Module.__init__``,
    then its attributes, children, parameters (dtype and ``requires_grad``
    kept) and buffers are restored.

    Parameters
    ----------
    config, tensors
        As returned by :func:`module_state` (tensors may be numpy arrays or
        torch tensors).
    classes : dict of {str: type}, optional
        Class objects to use for these names without any trust check (the
        caller trusted where they came from, such as a pickle).
    trusted : iterable of str, default=()
        Further class names that may be imported, such as
        ``["mypackage.nets.Net"]``.

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    UntrustedTypeError
        When a class is neither in ``classes``, nor torch.nn's or
        sktransfer's, nor in ``trusted``; the message lists them all.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    >>> copy = module_from_state(*module_state(net))
    >>> x = torch.ones(1, 2)
    >>> bool((copy(x) == net(x)).all())
    True
    """
    if config.get("version", STATE_VERSION) > STATE_VERSION:
        raise ValueError(f"this module state has version {config['version']}; this "
                         f"sktransfer reads up to {STATE_VERSION}: upgrade sktransfer")
    resolved = resolve_classes(class_names(config), classes, trusted)
    shared = {}
    return _build(config, "", tensors, resolved, shared)


def _build(config, prefix, tensors, classes, shared):
    cls = classes[config["class"]]
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"{config['class']} is not a torch.nn.Module class")
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    module.training = bool(config.get("training", True))
    for key, value in config["attrs"].items():
        object.__setattr__(module, key, _decode(value, tensors, classes))
    for name, child in config["children"].items():
        module._modules[name] = (None if child is None
                                 else _build(child, f"{prefix}{name}.", tensors, classes, shared))
    for item in config["parameters"]:
        module._parameters[item["name"]] = _tensor(item, prefix, tensors, shared, parameter=True)
    for item in config["buffers"]:
        module._buffers[item["name"]] = _tensor(item, prefix, tensors, shared, parameter=False)
        if not item.get("persistent", True):
            module._non_persistent_buffers_set.add(item["name"])
    if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
        # The hooks LazyModuleMixin.__init__ registers: they infer the shapes
        # at the first forward (or from a loaded state dict).
        module._load_hook = module._register_load_state_dict_pre_hook(module._lazy_load_hook)
        module._initialize_hook = module.register_forward_pre_hook(
            module._infer_parameters, with_kwargs=True)
    return module


def _tensor(item, prefix, tensors, shared, parameter):
    full = prefix + item["name"]
    if item.get("none"):
        return None
    if "same_as" in item:
        return shared[item["same_as"]]
    if item.get("lazy"):
        tensor = (UninitializedParameter(requires_grad=item.get("requires_grad", True))
                  if parameter else UninitializedBuffer())
    else:
        data = tensors[full]
        tensor = (data.detach().clone() if isinstance(data, torch.Tensor)
                  else array_to_tensor(data, item["dtype"]))
        if str(tensor.dtype) != f"torch.{item['dtype']}":
            tensor = tensor.to(getattr(torch, item["dtype"]))
        if parameter:
            tensor = nn.Parameter(tensor, requires_grad=bool(item.get("requires_grad", True)))
    shared[full] = tensor
    return tensor


# -- modules inside pickled state ------------------------------------------------------

class PickledModule:
    """An ``nn.Module`` as it travels in a pickle: config, arrays and user classes.

    Pickling a module object directly carries ``torch.save`` bytes that
    ``torch.load`` unpickles with code execution; this carries numpy arrays,
    a config of plain values and the user's class objects (which cloudpickle
    ships by value when they live in ``__main__``).

    Examples
    --------
    >>> import pickle
    >>> from torch import nn
    >>> packed = pickle.loads(pickle.dumps(PickledModule(nn.Linear(2, 1))))
    >>> packed.module()
    Linear(in_features=2, out_features=1, bias=True)
    """

    def __init__(self, module):
        self.config, self.tensors = module_state(module)
        self.classes = user_classes(module)

    def module(self):
        """The module, rebuilt with the classes this object carries."""
        return module_from_state(self.config, self.tensors, classes=self.classes)


def pack_modules(state, names):
    """Replace the ``nn.Module`` values of ``state[name]`` with :class:`PickledModule`.

    For an estimator's ``__getstate__``; :func:`unpack_modules` undoes it.
    """
    state = dict(state)
    for name in names:
        if isinstance(state.get(name), nn.Module):
            state[name] = PickledModule(state[name])
    return state


def unpack_modules(state):
    """Turn every :class:`PickledModule` value of ``state`` back into its module."""
    return {k: v.module() if isinstance(v, PickledModule) else v for k, v in state.items()}


# -- plain values with tensors (optimizer state) ----------------------------------------

def to_plain(obj):
    """Nested dicts/lists/tuples with tensors -> the same with tagged numpy arrays.

    Dicts keyed by anything but strings (an optimizer's state, keyed by
    parameter index) become ``{"__items__": [[key, value], ...]}``.

    Examples
    --------
    >>> import torch
    >>> plain = to_plain({"state": {0: {"step": torch.tensor(3.0)}}, "lr": 0.1})
    >>> from_plain(plain)["state"][0]["step"]
    tensor(3.)
    """
    if isinstance(obj, torch.Tensor):
        return {"__tensor__": tensor_to_array(obj), "dtype": dtype_name(obj.dtype)}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: to_plain(v) for k, v in obj.items()}}
        return {"__items__": [[k, to_plain(v)] for k, v in obj.items()]}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return {"__tuple__": [to_plain(v) for v in obj]}
    return obj


def from_plain(obj):
    """Undo :func:`to_plain` (tensors on the CPU)."""
    if isinstance(obj, list):
        return [from_plain(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return array_to_tensor(obj["__tensor__"], obj["dtype"])
    if "__dict__" in obj:
        return {k: from_plain(v) for k, v in obj["__dict__"].items()}
    if "__items__" in obj:
        return {k: from_plain(v) for k, v in obj["__items__"]}
    if "__tuple__" in obj:
        return tuple(from_plain(v) for v in obj["__tuple__"])
    return obj


# -- backbones ------------------------------------------------------------------------

def _spec_source(spec):
    """``("torchvision", "resnet18")`` for a string spec a loader rebuilds, else None."""
    from . import SOURCES

    source, sep, name = str(spec).partition(":")
    return (source, name) if sep and source in SOURCES and name else None


def backbone_state(backbone):
    """Describe a :class:`~sktransfer.backbones.base.Backbone` as config + arrays.

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
        ``{"kind": "spec", ...}`` (what rebuilds the architecture; for
        Hugging Face also the model config and the tokenizer's files), for
        any other module ``{"kind": "module", "module": <module_state
        config>}``.
    tensors : dict of {str: numpy.ndarray}
        The module's state dict as CPU arrays (for modules: as
        :func:`module_state` gives them).

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
    module = backbone.module
    source = _spec_source(backbone.spec)
    if source is not None:
        network = {"kind": "spec", "source": source[0], "name": source[1],
                   "training": [n for n, m in module.named_modules() if m.training],
                   "frozen": [n for n, p in module.named_parameters() if not p.requires_grad]}
        if source[0] == "hf":
            from .huggingface import encoder_state

            network.update(encoder_state(module))
        elif backbone.modality == "image":
            # pooling="max" swapped the final pool: not in the spec, nor in
            # the state dict (pools have no weights).
            network["global_pool"] = image_global_pool(module)
        tensors = {k: tensor_to_array(v) for k, v in module.state_dict().items()}
        network["dtypes"] = {k: dtype_name(v.dtype) for k, v in module.state_dict().items()
                             if v.dtype in _VIEW_AS}
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
    return config, tensors


def backbone_from_state(config, tensors, *, classes=None, trusted=()):
    """Rebuild the :class:`~sktransfer.backbones.base.Backbone` :func:`backbone_state` described.

    String specs are rebuilt from the spec with random weights (no download,
    no original directory needed), then the carried state dict is loaded
    strictly; it holds tensors only. Other modules are rebuilt with
    :func:`module_from_state`.

    Parameters
    ----------
    config, tensors
        As returned by :func:`backbone_state`.
    classes, trusted
        As for :func:`module_from_state` (user modules only).

    Returns
    -------
    Backbone

    Raises
    ------
    UntrustedTypeError
        When a user module's classes are neither given nor trusted.
    """
    from .base import Backbone

    if config.get("version", STATE_VERSION) > STATE_VERSION:
        raise ValueError(f"this backbone state has version {config['version']}; this "
                         f"sktransfer reads up to {STATE_VERSION}: upgrade sktransfer")
    network = config["network"]
    if network["kind"] == "spec":
        module = _module_from_spec(network, tensors)
    else:
        module = module_from_state(network["module"], tensors, classes=classes, trusted=trusted)
    groups = config.get("param_groups")
    return Backbone(
        module, preprocess_from_state(config["preprocess"]), config["modality"],
        config["spec"], config.get("weights_id", ""), out_dim=config.get("out_dim"),
        input_channels=config.get("input_channels"),
        param_groups=None if groups is None else [(g, list(n)) for g, n in groups],
    )


def _module_from_spec(network, tensors):
    source, name = network["source"], network["name"]
    if source == "hf":
        from .huggingface import encoder_from_state

        module = encoder_from_state(network)
    else:
        from . import SOURCES

        module = SOURCES[source](name, None).module
        set_image_global_pool(module, network.get("global_pool", "avg"), f"{source}:{name}")
    dtypes = network.get("dtypes", {})
    state = {k: array_to_tensor(v, dtypes.get(k)) for k, v in tensors.items()}
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"the saved weights do not fit {source}:{name} as this version builds it: "
            f"missing keys {result.missing_keys[:5]}, unexpected keys "
            f"{result.unexpected_keys[:5]}"
        )
    frozen = set(network.get("frozen", ()))
    for pname, param in module.named_parameters():
        param.requires_grad_(pname not in frozen)
    # Per submodule: a wrapper may be in training mode around an eval model.
    training = set(network.get("training", ()))
    for mname, sub in module.named_modules():
        sub.training = mname in training
    return module


# -- preprocessing ------------------------------------------------------------------------

def preprocess_state(preprocess):
    """The constants of a preprocess as a dict with a ``"kind"``.

    Preprocessors with a ``state()`` method (image, tensor, tokenize)
    describe themselves; any other callable is kept as
    ``{"kind": "object", "object": preprocess}`` for pickling only.
    """
    if hasattr(preprocess, "state") and hasattr(type(preprocess), "from_state"):
        return preprocess.state()
    return {"kind": "object", "object": preprocess}


def preprocess_from_state(config):
    """The preprocess :func:`preprocess_state` described."""
    from .preprocess import ImagePreprocess, TensorPreprocess

    kind = config["kind"]
    if kind == "image":
        return ImagePreprocess.from_state(config)
    if kind == "tensor":
        return TensorPreprocess.from_state(config)
    if kind == "tokenize":
        from .huggingface import Tokenize

        return Tokenize.from_state(config)
    if kind == "object":
        return config["object"]
    raise ValueError(f"unknown preprocess kind {kind!r}")

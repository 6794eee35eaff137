"""Any ``nn.Module`` as plain data: a JSON-able config tree plus named arrays.

This is what pickles (and ``sktransfer.save`` files) hold instead of a
pickled module object, so that reading them runs no code hidden inside an
inner ``torch.save`` pickle, and an audit (``skops.io.get_untrusted_types``)
sees the classes that really run.

- :func:`module_state` / :func:`module_from_state`: a user's network, a
  head, the L2-SP penalty, as a tree of ``{"class", "attrs", "children",
  "parameters", "buffers"}``, rebuilt without running a constructor.
- :class:`PickledModule`: an ``nn.Module`` held in an estimator's pickled
  state as that data (see :func:`pack_modules`).

Classes are named ``"<module>.<qualname>"`` and imported only if trusted
(see :mod:`sktransfer.persistence.trust`).
"""

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter, is_lazy
from torch.utils.hooks import RemovableHandle

from .checks import check_module_config
from .codec import (array_to_tensor, decode_attribute, dtype_from_name, dtype_name,
                    encode_attribute, tensor_to_array)
from ..engine.module import plain_attributes
from .trust import class_name, class_names, resolve_classes, user_classes

#: Version of the config layout, checked when rebuilding.
STATE_VERSION = 1


def check_state_version(config, what):
    """Refuse a config written by a newer layout than this sktransfer reads."""
    if config.get("version", STATE_VERSION) > STATE_VERSION:
        raise ValueError(f"this {what} state has version {config['version']}; this "
                         f"sktransfer reads up to {STATE_VERSION}: upgrade sktransfer")


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
        keeps them exactly (tuples, dtypes, classes are tagged, see
        :func:`~sktransfer.persistence.codec.encode_attribute`); values JSON
        cannot hold are kept as ``{"__object__": value}`` for pickling (see
        :func:`~sktransfer.persistence.codec.non_json_values`). Parameter and
        buffer entries give ``name``, ``dtype``, ``requires_grad`` /
        ``persistent``, or ``same_as`` (a tensor shared with an earlier
        name), ``lazy`` (not yet initialized) or ``none``.
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
    # torch's bookkeeping is rebuilt by nn.Module.__init__, not carried
    # ("training" is carried on its own); hook handles are not data.
    attrs = {k: encode_attribute(v, prefix + k, tensors)
             for k, v in ((k, vars(module)[k]) for k in plain_attributes(module))
             if not isinstance(v, RemovableHandle)}
    children = {n: None if c is None else _describe(c, f"{prefix}{n}.", tensors, seen)
                for n, c in module._modules.items()}
    return {"class": class_name(type(module)), "training": bool(module.training),
            "attrs": attrs, "children": children, "parameters": params, "buffers": buffers}


def module_from_state(config, tensors, *, classes=None, trusted=(), objects=None):
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
    objects : bool, optional
        Whether attributes may hold objects as they are
        (``{"__object__": value}``): pickles do, files never. By default,
        true when ``classes`` is given (a pickle's state).

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    UntrustedTypeError
        When a class is neither in ``classes``, nor torch.nn's or
        sktransfer's, nor in ``trusted``; the message lists them all.
    UntrustedContentError
        When a class name is not the class it names, an attribute key is a
        dunder, torch's bookkeeping or a method or property of its class,
        or a tag is not what it says (see
        :func:`~sktransfer.persistence.trust.check_attribute_key`). Every
        check is made before any module is built.

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
    check_state_version(config, "module")
    # Every class is checked (and refused together) before any is built.
    resolved = resolve_classes(class_names(config), classes, trusted)
    check_module_config(config, tensors, resolved,
                        objects=classes is not None if objects is None else objects)
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
        object.__setattr__(module, key, decode_attribute(value, tensors, classes))
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
            tensor = tensor.to(dtype_from_name(item["dtype"]))
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

    Pickles written before sktransfer's modules were reorganized name this
    class ``sktransfer.backbones.state.PickledModule``, which stays an alias;
    its attributes (``config``, ``tensors``, ``classes``) are what such
    pickles restore, so they must keep their names.

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

    Examples
    --------
    >>> from torch import nn
    >>> packed = pack_modules({"head_": nn.Linear(2, 1), "n_": 3}, ["head_"])
    >>> type(packed["head_"]).__name__, packed["n_"]
    ('PickledModule', 3)
    >>> unpack_modules(packed)["head_"]
    Linear(in_features=2, out_features=1, bias=True)
    """
    state = dict(state)
    for name in names:
        if isinstance(state.get(name), nn.Module):
            state[name] = PickledModule(state[name])
    return state


def unpack_modules(state):
    """Turn every :class:`PickledModule` value of ``state`` back into its module."""
    return {k: v.module() if isinstance(v, PickledModule) else v for k, v in state.items()}

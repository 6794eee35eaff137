"""What a stored module tree may say: checked whole, before anything is built from it.

:func:`check_module_config` walks a module tree as
:func:`~sktransfer.persistence.modules.module_state` writes it: every node a
``torch.nn.Module`` class already resolved by identity
(:mod:`sktransfer.persistence.trust`), every attribute key and member name
data (:func:`~sktransfer.persistence.trust.check_attribute_key`), every
attribute value made of the codec's tags only
(:func:`check_encoded_attribute`), every dtype a ``torch.dtype``. A refusal
is an :class:`~sktransfer.persistence.trust.UntrustedContentError` naming
what was refused.
"""

import torch
from torch import nn

from .codec import dtype_from_name
from .trust import (UntrustedContentError, check_attribute_key, check_member_name, class_names,
                    resolve_classes)


def check_module_config(config, tensors, classes, *, objects=False, prefix=""):
    """Refuse a module tree that :func:`module_state` could not have written.

    Walks the whole tree before anything is built: each node is a
    ``torch.nn.Module`` class of ``classes``; its attribute keys and member
    names pass :func:`~sktransfer.persistence.trust.check_attribute_key`;
    its attribute values carry only the codec's tags
    (:func:`~sktransfer.persistence.codec.check_encoded_attribute`); its
    tensors name dtypes.

    Raises
    ------
    UntrustedContentError
        Naming the first key, name or tag refused.
    """
    if not isinstance(config, dict) or not isinstance(config.get("class"), str):
        raise UntrustedContentError(prefix or "<root>", "a module node needs a class name")
    cls = classes[config["class"]]
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise UntrustedContentError(config["class"], "it is not a torch.nn.Module class")
    attrs, children = config.get("attrs", {}), config.get("children", {})
    members = config.get("parameters", []), config.get("buffers", [])
    if not (isinstance(attrs, dict) and isinstance(children, dict)
            and all(isinstance(m, list) for m in members)):
        raise UntrustedContentError(prefix or "<root>", "a module node's parts are malformed")
    for key, value in attrs.items():
        check_attribute_key(cls, key)
        check_encoded_attribute(value, prefix + key, tensors, objects=objects)
    for name, child in children.items():
        check_member_name(cls, name)
        if child is not None:
            check_module_config(child, tensors, classes, objects=objects,
                                prefix=f"{prefix}{name}.")
    for item in members[0] + members[1]:
        if not isinstance(item, dict):
            raise UntrustedContentError(prefix or "<root>", "a tensor entry is malformed")
        check_member_name(cls, item.get("name"))
        if "dtype" in item:
            dtype_from_name(item["dtype"])


_ATTRIBUTE_TAGS = {"__tuple__", "__dict__", "__dtype__", "__device__", "__tensor__",
                   "__array__", "__class__", "__object__"}


def check_encoded_attribute(value, key, tensors, *, objects=False):
    """Refuse an encoded attribute that :func:`encode_attribute` could not have written.

    Called on what a file says before anything is decoded: every tag is one
    of the table's, with the type it must have; a dtype tag names a
    ``torch.dtype``, a device tag a device, a tensor or array tag a tensor
    the file holds. ``{"__object__": ...}`` is allowed only with
    ``objects=True`` (a pickle's own objects; files never hold them).

    Parameters
    ----------
    value : object
        As read from the file.
    key : str
        The attribute's name, for the message.
    tensors : container of str
        The names of the tensors that came with the config.
    objects : bool, default=False

    Raises
    ------
    UntrustedContentError
        Naming the attribute and the tag.

    Examples
    --------
    >>> check_encoded_attribute({"__tuple__": [1, {"__dtype__": "float16"}]}, "spec", {})
    >>> check_encoded_attribute({"__dtype__": "save"}, "spec", {})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sktransfer.persistence.trust.UntrustedContentError: refusing 'save' ...
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            check_encoded_attribute(item, f"{key}.{i}", tensors, objects=objects)
        return
    if not isinstance(value, dict):
        raise UntrustedContentError(key, f"a {type(value).__name__} is no encoded attribute")
    tags = set(value) & _ATTRIBUTE_TAGS
    if len(tags) != 1 or not set(value) <= tags | {"dtype"}:
        raise UntrustedContentError(key, f"{sorted(value)[:4]} is no encoded attribute")
    (tag,) = tags
    inner = value[tag]
    if tag == "__tuple__" and isinstance(inner, list):
        check_encoded_attribute(inner, key, tensors, objects=objects)
    elif tag == "__dict__" and isinstance(inner, dict):
        for name, item in inner.items():
            check_encoded_attribute(item, f"{key}.{name}", tensors, objects=objects)
    elif tag == "__dtype__":
        dtype_from_name(inner)
    elif tag == "__device__" and isinstance(inner, str):
        try:
            torch.device(inner)
        except (RuntimeError, ValueError) as exc:
            raise UntrustedContentError(inner, f"it is no device ({exc})") from None
    elif tag == "__tensor__" and isinstance(inner, str) and inner in tensors:
        dtype_from_name(value.get("dtype"))
    elif tag == "__array__" and isinstance(inner, str) and inner in tensors:
        pass
    elif tag == "__class__" and isinstance(inner, str):
        pass  # checked with every class name, see trust.resolve_classes
    elif tag == "__object__" and objects:
        pass
    else:
        raise UntrustedContentError(key, f"{tag} holding {type(inner).__name__} "
                                         f"{str(inner)[:40]!r} is not allowed here")


class _AnyName:
    """Stands for the tensor names while the manifest is checked before reading them."""

    def __contains__(self, name):
        return isinstance(name, str)


def check_networks(config, *, trusted=(), classes=None):
    """Every network ``config`` describes, checked before anything is built.

    Each module tree's classes are resolved (by identity, see
    :func:`~sktransfer.persistence.trust.resolve_classes`) and its keys and
    tags checked with :func:`check_module_config`; each spec network's
    dtypes name dtypes. Tensor names are not checked here (the reader calls
    this before reading tensors); the same checks run again as each module
    is rebuilt, with the tensors at hand.

    Parameters
    ----------
    config : dict or list
        A manifest's estimators, or any part of them.
    trusted : iterable of str
        Further class names to trust.
    classes : dict of {str: type}, optional
        Class objects to use as they are (a writer's own modules).
    """
    def visit(node):
        if isinstance(node, dict):
            if "class" in node and "children" in node:
                resolved = resolve_classes(class_names(node), classes, trusted)
                check_module_config(node, _AnyName(), resolved)
                return
            if node.get("kind") == "spec":
                for dtype in (node.get("dtypes") or {}).values():
                    dtype_from_name(dtype)
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(config)

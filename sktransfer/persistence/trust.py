"""Which classes a stored model may make us import.

A pickle or a model file names the classes of its networks as
``"<module>.<qualname>"``. Importing a class runs its module's code, so a
name is imported only when it is trusted: ``torch.nn``'s own modules,
sktransfer's own, and the names the user passes as ``trusted``. Class
objects that a pickle carries itself (the user chose to load that pickle)
are used as they are. Anything else raises :class:`UntrustedTypeError`,
listing every such name at once, so one error tells the user all there is
to check.
"""

import importlib

#: Class name prefixes importable without being listed in ``trusted``.
TRUSTED_PREFIXES = ("torch.nn.", "sktransfer.")


class UntrustedTypeError(TypeError):
    """A state names classes that are neither given nor trusted.

    Attributes
    ----------
    names : list of str
        Every untrusted class name, sorted.

    Examples
    --------
    >>> error = UntrustedTypeError(["evil.Payload"])
    >>> error.names
    ['evil.Payload']
    >>> isinstance(error, TypeError)
    True
    """

    def __init__(self, names):
        self.names = sorted(set(names))
        super().__init__(
            f"refusing to import untrusted classes {self.names}: a saved model names "
            "them, and importing them would run their code. If you trust where the "
            f"model came from, pass trusted={self.names!r}."
        )


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


def import_class(name):
    """Import ``"<module>.<qualname>"``, trying the longest module path first.

    The longest first, because a qualname may itself contain dots (a class
    nested in a class) and a module path may name a package and a module.

    Raises
    ------
    ImportError
        When no prefix of ``name`` is an importable module holding a class
        at the rest of the name.

    Examples
    --------
    >>> import_class("torch.nn.modules.linear.Linear").__name__
    'Linear'
    """
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

    Examples
    --------
    >>> resolve_classes(["torch.nn.modules.activation.ReLU"])
    {'torch.nn.modules.activation.ReLU': <class 'torch.nn.modules.activation.ReLU'>}
    >>> resolve_classes(["evil.Payload"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sktransfer.persistence.trust.UntrustedTypeError: refusing to import untrusted classes ...
    """
    classes = dict(classes or {})
    # Checked before importing any of them: a refused file imports nothing.
    untrusted = [n for n in names if n not in classes and not is_trusted(n, trusted)]
    if untrusted:
        raise UntrustedTypeError(untrusted)
    return {n: classes[n] if n in classes else import_class(n) for n in set(names)}


def class_names(config):
    """Every class name a module or backbone config refers to, sorted.

    The save format can check these against what the user trusts before
    rebuilding anything. A name is a module tree node's ``"class"`` (a dict
    that also has ``"children"``) or a class-valued attribute
    (``{"__class__": name}``, see :mod:`sktransfer.persistence.codec`).

    Examples
    --------
    >>> class_names({"class": "torch.nn.modules.linear.Linear", "children": {},
    ...              "attrs": {"kind": {"__class__": "my.Kind"}}})
    ['my.Kind', 'torch.nn.modules.linear.Linear']
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
    ships a class defined in ``__main__`` by value, and an audit lists it):
    the classes of its submodules and the classes held as attributes.

    Examples
    --------
    >>> from torch import nn
    >>> user_classes(nn.Sequential(nn.Linear(2, 1)))
    {}
    """
    found = {}
    for sub in module.modules():
        for cls in [type(sub)] + [v for v in vars(sub).values() if isinstance(v, type)]:
            name = class_name(cls)
            if not is_trusted(name):
                found[name] = cls
    return found

"""Which classes a stored model may make us import, and which keys it may set.

A pickle or a model file names the classes of its networks as
``"<module>.<qualname>"``. Trust is by identity, never by spelling: a name
is trusted when it is listed in ``trusted`` or lies in a trusted package
(``torch.nn``, ``sktransfer``), and then the class found there must be
that very class, its own ``__module__`` and ``__qualname__`` equal to the
name. A name that only *reaches* a class through a trusted module (an
imported module, a re-export: ``sktransfer._utils.files.tempfile.X``) is
refused. Finding a class never walks attributes with ``getattr`` (which
runs a module's ``__getattr__``): the module is looked up or imported by
its own path, and the qualname read from the module's and classes' own
``__dict__``. A module of a trusted package that is not imported yet is
only imported once its source is seen to define the class (a name that
cannot be a class imports nothing).

Class objects that a pickle carries itself (the user chose to load that
pickle) are used as they are.

The keys a file sets on a rebuilt module are data too
(:func:`check_attribute_key`): never a dunder, never torch's bookkeeping,
never a method or property of the class.

Refusals raise :class:`UntrustedTypeError` (names not trusted, listed all
at once so one error tells the user all there is to check) or its subclass
:class:`UntrustedContentError` (a disguised name, a forbidden key or tag:
nothing the user can opt into).
"""

import ast
import functools
import importlib
import inspect
import os
import sys

from ..engine.module import BOOKKEEPING

#: Packages whose own classes are importable without being listed in ``trusted``.
TRUSTED_PACKAGES = ("torch.nn", "sktransfer")

#: The same as name prefixes (kept for code that imported it).
TRUSTED_PREFIXES = tuple(p + "." for p in TRUSTED_PACKAGES)

#: Names that files and pickles written by earlier sktransfer releases give
#: classes that have moved since: mapped to the class's own name before any
#: check, so that only the class's identity is ever trusted.
LEGACY_NAMES = {
    "sktransfer.regularizers.L2SP": "sktransfer.training.l2sp.L2SP",
    "sktransfer.heads.BackboneWithHead": "sktransfer.training.heads.BackboneWithHead",
    "sktransfer.contrastive.CosinePairs": "sktransfer.training.contrastive.CosinePairs",
    "sktransfer.backbones.huggingface.TextEncoder": "sktransfer.backbones.hf_text.TextEncoder",
}


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


class UntrustedContentError(UntrustedTypeError, ValueError):
    """A stored model asks for what no model file may: refused, whatever is trusted.

    A name that is not the class it seems (it reaches another object through
    a trusted module), an attribute key that is a dunder, torch's
    bookkeeping or a method of the class, a tag that is not what it says
    (a dtype tag naming anything but a ``torch.dtype``). Such content is not
    written by sktransfer: the file was crafted or corrupted.

    It is an :class:`UntrustedTypeError` (what callers catch for refused
    files) and a :class:`ValueError` (the file's content is invalid).

    Parameters
    ----------
    what : str
        The refused name, key or tag, as the file spells it.
    why : str
        What is wrong with it.

    Examples
    --------
    >>> error = UntrustedContentError("forward", "it is a method of Linear")
    >>> error.names, isinstance(error, ValueError)
    (['forward'], True)
    """

    def __init__(self, what, why):
        self.names = [what]
        self.why = why
        TypeError.__init__(
            self, f"refusing {what!r} from a stored model: {why}. sktransfer never writes "
                  "this; the file was crafted or corrupted, and nothing was built from it.")


def class_name(cls):
    """``"<module>.<qualname>"`` of a class.

    Examples
    --------
    >>> from torch import nn
    >>> class_name(nn.Linear)
    'torch.nn.modules.linear.Linear'
    """
    return f"{cls.__module__}.{cls.__qualname__}"


def canonical_name(name):
    """``name``, or the class's own name where an older release wrote an alias.

    Examples
    --------
    >>> canonical_name("sktransfer.regularizers.L2SP")
    'sktransfer.training.l2sp.L2SP'
    """
    return LEGACY_NAMES.get(name, name)


def _in_trusted_package(name):
    return any(name.startswith(p + ".") for p in TRUSTED_PACKAGES)


def is_trusted(name, trusted=()):
    """True when ``name`` is listed or lies in a trusted package (``torch.nn``, ``sktransfer``).

    This is the check made before importing anything; the class found
    must still *be* that name (see :func:`import_class`).

    Examples
    --------
    >>> is_trusted("torch.nn.modules.linear.Linear"), is_trusted("evil.Payload")
    (True, False)
    """
    if not isinstance(name, str):
        return False
    return (name in set(trusted) or canonical_name(name) in set(trusted)
            or _in_trusted_package(canonical_name(name)))


def import_class(name, *, allow_import=True):
    """The class whose own ``__module__`` and ``__qualname__`` make ``name``.

    Module paths are tried longest first (a qualname may contain dots, a
    class nested in a class). A module already imported is used as it is;
    one of a trusted package is imported only when its source defines the
    class; any other is imported only with ``allow_import`` (a name the user
    listed in ``trusted``).

    Raises
    ------
    UntrustedContentError
        When the object found at ``name`` is not a class with exactly that
        name (``sktransfer._utils.files.tempfile.X`` reaches the standard
        library's ``tempfile.X``).
    ImportError
        When no module holds a class at the rest of the name.

    Examples
    --------
    >>> import_class("torch.nn.modules.linear.Linear").__name__
    'Linear'
    >>> import_class("torch.nn.modules.module.weakref.finalize")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sktransfer.persistence.trust.UntrustedContentError: refusing ...
    """
    if not isinstance(name, str) or not all(p.isidentifier() for p in name.split(".")):
        raise UntrustedContentError(str(name), "it is not a dotted class name")
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_path, qualname = ".".join(parts[:cut]), parts[cut:]
        module = _module(module_path, qualname, allow_import)
        if module is None:
            continue
        obj = _own_member(module, qualname)
        if obj is None:
            raise UntrustedContentError(name, f"{module_path} defines no class "
                                              f"{'.'.join(qualname)} of its own")
        if not isinstance(obj, type) or class_name(obj) != name:
            found = class_name(obj) if isinstance(obj, type) else type(obj).__name__
            raise UntrustedContentError(name, f"it is not the class it names but {found}, "
                                              f"reached through {module_path}")
        return obj
    raise ImportError(
        f"cannot import class {name!r}: its module is not installed here, or it was "
        "defined where it cannot be imported (inside a function, in a script's "
        "__main__); pickles carry such classes with them, files cannot."
    )


def _module(path, qualname, allow_import):
    """The module at ``path`` if it exists and may be used, else None."""
    module = sys.modules.get(path)
    if module is not None:
        return module
    if not allow_import:
        source = _trusted_source(path)
        if source is None or not _defines_class(source, tuple(qualname)):
            return None
    try:
        return importlib.import_module(path)
    except ImportError:
        return None


def _own_member(module, qualname):
    """``module.<qualname>`` read from ``__dict__`` only: no ``__getattr__``, no inheritance."""
    obj = module
    for i, part in enumerate(qualname):
        if i and not isinstance(obj, type):
            return None
        obj = vars(obj).get(part)
        if obj is None:
            return None
    return obj


def _trusted_source(path):
    """The source file of module ``path`` of a trusted package, found without importing."""
    top = next((p for p in TRUSTED_PACKAGES if path == p or path.startswith(p + ".")), None)
    root = sys.modules.get(top.split(".")[0]) if top else None
    if root is None or not getattr(root, "__file__", None):
        return None
    folder = os.path.join(os.path.dirname(root.__file__), *path.split(".")[1:])
    for candidate in (folder + ".py", os.path.join(folder, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


@functools.lru_cache(maxsize=256)
def _defines_class(source, qualname):
    """True when the file ``source`` has a ``class`` statement at ``qualname``."""
    try:
        with open(source, encoding="utf-8") as fh:
            body = ast.parse(fh.read()).body
    except (OSError, SyntaxError, ValueError):
        return False
    for part in qualname:
        found = [n for n in body if isinstance(n, ast.ClassDef) and n.name == part]
        if not found:
            return False
        body = found[0].body
    return True


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
        Listing every name that is neither in ``classes`` nor trusted,
        before any is imported.
    UntrustedContentError
        For a trusted-looking name that is not the class it names.

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
    trusted = set(trusted)
    names = set(names)
    # Checked before importing any of them: a refused file imports nothing.
    untrusted = [n for n in names if n not in classes and not is_trusted(n, trusted)]
    if untrusted:
        raise UntrustedTypeError([str(n) for n in untrusted])
    resolved = {}
    for name in names:
        if name in classes:
            resolved[name] = classes[name]
            continue
        own = canonical_name(name)
        listed = name in trusted or own in trusted
        resolved[name] = import_class(own, allow_import=listed)
    return resolved


def check_attribute_key(cls, key):
    """Refuse ``key`` as an attribute a file sets on a module of class ``cls``.

    An attribute key read from a file is data. It may not be a dunder
    (``__class__``, ``__dict__``), torch's bookkeeping (``_parameters``,
    ``_modules``, the hook dictionaries) or a name the class defines as a
    method, property or other descriptor (``forward``, ``extra_repr``): any
    of these would let a file change what the module's code does. Plain data
    the class defines (``dump_patches = False``) may be set per instance.

    Raises
    ------
    UntrustedContentError
        Naming the key and why.

    Examples
    --------
    >>> from torch import nn
    >>> check_attribute_key(nn.Linear, "in_features")
    >>> check_attribute_key(nn.Linear, "forward")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sktransfer.persistence.trust.UntrustedContentError: refusing 'forward' ...
    """
    if not isinstance(key, str) or not key.isidentifier():
        raise UntrustedContentError(str(key), "an attribute key must be an identifier")
    _check_name(cls, key)


def check_member_name(cls, name):
    """Refuse ``name`` as a child, parameter or buffer of a module of class ``cls``.

    The rules of :func:`check_attribute_key`, on torch's names for members:
    any non-empty string without a dot (``nn.Sequential``'s ``"0"``, an
    ``nn.ModuleDict``'s ``"conv-1"``).

    Examples
    --------
    >>> from torch import nn
    >>> check_member_name(nn.Sequential, "0")
    """
    if not isinstance(name, str) or not name or "." in name:
        raise UntrustedContentError(str(name), "a member name must be a non-empty "
                                               "string without dots")
    _check_name(cls, name)


def _check_name(cls, name):
    if name.startswith("__"):
        raise UntrustedContentError(name, "a file never sets a dunder or name-mangled "
                                          "attribute")
    if name in BOOKKEEPING:
        raise UntrustedContentError(name, "it is torch's bookkeeping of the module")
    defined = inspect.getattr_static(cls, name, _MISSING)
    if defined is not _MISSING and (callable(defined) or hasattr(type(defined), "__get__")):
        raise UntrustedContentError(name, f"{cls.__qualname__} defines it as "
                                          f"{type(defined).__name__}")


_MISSING = object()


def class_names(config):
    """Every class name a module or backbone config refers to, sorted.

    The save format can check these against what the user trusts before
    rebuilding anything. A name is a module tree node's ``"class"`` (a dict
    that also has ``"children"``) or a class-valued attribute
    (``{"__class__": name}``, see :mod:`sktransfer.persistence.codec`).
    Inside a module tree the walk follows the tree's own layout, so that an
    attribute *key* spelled ``__class__`` is not mistaken for a tag.

    Examples
    --------
    >>> class_names({"class": "torch.nn.modules.linear.Linear", "children": {},
    ...              "attrs": {"kind": {"__class__": "my.Kind"}}})
    ['my.Kind', 'torch.nn.modules.linear.Linear']
    """
    found = set()

    def visit(node):
        if isinstance(node, dict):
            if "children" in node and "class" in node:
                tree(node)
                return
            for value in node.values():
                visit(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                visit(value)

    def tree(node):
        found.add(_name(node["class"]))
        attrs, children = node.get("attrs"), node.get("children")
        for value in attrs.values() if isinstance(attrs, dict) else ():
            attribute(value)
        for child in children.values() if isinstance(children, dict) else ():
            if isinstance(child, dict):
                tree(child)

    def attribute(value):
        if isinstance(value, list):
            for item in value:
                attribute(item)
        elif isinstance(value, dict) and len(value) == 1:
            (tag, inner), = value.items()
            if tag == "__class__":
                found.add(_name(inner))
            elif tag == "__tuple__":
                attribute(inner)
            elif tag == "__dict__" and isinstance(inner, dict):
                for item in inner.values():
                    attribute(item)

    visit(config)
    return sorted(found)


def _name(value):
    if not isinstance(value, str):
        raise UntrustedContentError(repr(value), "a class name must be a string")
    return value


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

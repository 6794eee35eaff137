"""What an engine is built from: a snapshot of a fitted network, and the check that it still holds.

An engine runs a private copy of the fitted network, so a change to the
fitted one must rebuild it, or calls would return the old model's numbers.
In-place changes of weights bump the tensors' version counters, but many
changes make no tensor change in place: a submodule replaced
(``net.fc = nn.Linear(...)``), a parameter reassigned
(``module.weight = nn.Parameter(...)``, ``load_state_dict(..., assign=True)``),
a buffer or a plain attribute set (``module.scale = 100``).

A :class:`ModelSnapshot` is taken of each fitted module an engine is built
from. It keeps

- a frozen copy of the module (:attr:`ModelSnapshot.module`: its module
  objects and plain attributes copied, its tensors shared), from which the
  engines are built and the feature cache's key is computed, so the numbers
  and the key under which they are stored always come from the same state;
- a watch over the live module (:meth:`ModelSnapshot.current`), cheap
  enough for every call: no weight is read, only which objects the module
  tree holds, whether its attributes were written, and the tensors' version
  counters and storage.
"""

import array
import itertools
import operator
import threading

import torch

from .module import plain_attributes, private_copy

_CHAIN = itertools.chain.from_iterable
_DATA_PTR = torch.Tensor.data_ptr
_VERSION = operator.attrgetter("_version")
# torch's dictionaries of each module whose entries an engine's copy is made of.
_REGISTRIES = ("_modules", "_parameters", "_buffers")


class ModelSnapshot:
    """A fitted module as an engine is built from it, and whether it is still so.

    Parameters
    ----------
    module : torch.nn.Module
        The live, fitted module; left untouched.

    Attributes
    ----------
    source : torch.nn.Module
        The live module.
    module : torch.nn.Module
        A copy of ``source`` taken now, in eval mode, sharing its tensors;
        never run and never changed, so what is computed from it (an
        engine, a cache key) describes ``source`` as it was at this moment.

    Examples
    --------
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(3, 2))
    >>> snapshot = ModelSnapshot(net)
    >>> snapshot.current()
    True
    >>> net[0] = nn.Linear(3, 2)  # a new submodule: no tensor changed in place
    >>> snapshot.current()
    False
    """

    def __init__(self, module):
        self.source = module
        self._watch = _Watch(module)
        # After the watch: a change made while copying is then seen as one.
        self.module = private_copy(module, None)
        self._memo = {}
        self._lock = threading.Lock()

    def current(self):
        """Whether ``source`` is still what this snapshot was taken of.

        True as long as the module tree holds the same submodules,
        parameters and buffers (by identity), its plain attributes are equal
        to what they were (containers and objects one level deep: a list
        attribute appended to, a config object's field set), and no tensor
        was changed in place or moved. Not seen: deeper changes (inside a
        list held in a list) and forward hooks registered since; the engine
        keeps serving this snapshot (``release_engine()`` takes a new one),
        and cached numbers stay under this snapshot's key, which describes
        them.
        """
        return self._watch.unchanged()

    def memo(self, name, compute):
        """``compute(self.module)``, computed once per snapshot and kept under ``name``."""
        try:
            return self._memo[name]
        except KeyError:
            pass
        with self._lock:
            if name not in self._memo:
                self._memo[name] = compute(self.module)
            return self._memo[name]


class _Watch:
    """What a module tree holds, observed once, and the cheap check that it still does.

    The check reads, in the interpreter's C code: the entries of every
    module's submodules, parameters and buffers, by identity; every tensor's
    version counter and storage; and CPython's version tag of every module's
    ``__dict__`` (and of the fields of objects held as attributes), which
    changes on every write to it (PEP 509, read through ``torch.compile``'s
    guard helper; where it is unavailable those entries are compared by
    identity instead). Only when such a ``__dict__`` was written is the
    tree observed again and compared: a write that changed nothing that
    matters (``train()`` / ``eval()``, an equal value) then becomes the new
    starting point.
    """

    def __init__(self, module):
        self.source = module
        self.lock = threading.Lock()
        self.seen = _Observation(module)

    def unchanged(self):
        seen = self.seen
        try:
            if (list(map(_VERSION, seen.tensors)) != seen.versions
                    or list(map(_DATA_PTR, seen.tensors)) != seen.pointers
                    or any(seen.empty_registries) or seen.registries != seen.registry_copies
                    or not all(d.get(k) is t for d, k, t in seen.small)):
                # A weight changed in place or moved; a submodule, parameter or
                # buffer replaced, added or removed.
                return False
            if seen.containers == seen.container_copies and seen.attributes_unwritten():
                return True
        except Exception:  # noqa: BLE001 - a value that cannot be compared: look again
            pass
        return self._look_again()

    def _look_again(self):
        with self.lock:
            fresh = _Observation(self.source)
            if not fresh.same_as(self.seen):
                return False
            self.seen = fresh  # the same model, written to: start from here
            return True


class _Observation:
    """The objects a module tree holds at one moment."""

    def __init__(self, module):
        self.modules = list(module.modules())
        attributes = [(m, name, vars(m)[name]) for m in self.modules
                      for name in plain_attributes(m)]
        objects = _attribute_objects(value for _, _, value in attributes)
        registries = [d for m in self.modules for d in map(vars(m).get, _REGISTRIES)
                      if isinstance(d, dict)]
        self.registered = list(_CHAIN(map(dict.values, registries)))
        # Compared with a copy: entries by identity (an unchanged one costs a
        # pointer compare); an empty one only for staying empty.
        self.registries = [d for d in registries if d]
        self.registry_copies = [dict(d) for d in self.registries]
        self.empty_registries = [d for d in registries if not d]
        # A tensor of one element compares equal to another of the same value,
        # so where such a tensor is registered its identity is checked too.
        self.small = [(d, k, t) for d in self.registries for k, t in d.items()
                      if isinstance(t, torch.Tensor) and t.numel() <= 1]
        # Plain attributes: each module's __dict__, the fields of objects held
        # there and dicts held there are watched for writes; lists and sets
        # (which have no version) by a copy of their content, one level down.
        self.dicts = ([vars(m) for m in self.modules] + [vars(o) for o in objects]
                      + [v for _, _, v in attributes if isinstance(v, dict)])
        self.containers = [v for _, _, v in attributes if isinstance(v, (list, set))]
        self.container_copies = [_content(v) for v in self.containers]
        self.contents = [list(d.items()) for d in self.dicts]
        if _versions_work():
            self.dict_versions = array.array("Q", map(_dict_version, self.dicts))
        else:
            self.dict_versions = None
            self.keys = list(_CHAIN(self.dicts))
            self.values = list(_CHAIN(map(dict.values, self.dicts)))
        self.tensors = _tensors(self.registered + [v for _, _, v in attributes])
        self.pointers = list(map(_DATA_PTR, self.tensors))
        self.versions = list(map(_VERSION, self.tensors))

    def attributes_unwritten(self):
        """Whether no watched ``__dict__`` was written since this observation."""
        if self.dict_versions is not None:
            return array.array("Q", map(_dict_version, self.dicts)) == self.dict_versions
        values = list(_CHAIN(map(dict.values, self.dicts)))
        return (len(values) == len(self.values) and all(map(operator.is_, values, self.values))
                and list(_CHAIN(self.dicts)) == self.keys)

    def same_as(self, old):
        """Whether this observation shows the tree ``old`` showed (``training`` aside)."""
        return (_identical(self.modules, old.modules)
                and _identical(self.registered, old.registered)
                and _identical(self.dicts, old.dicts)
                and _identical(self.tensors, old.tensors)
                and self.pointers == old.pointers and self.versions == old.versions
                and len(self.contents) == len(old.contents)
                and all(map(_same_entries, self.contents, old.contents,
                            itertools.chain(itertools.repeat(True, len(self.modules)),
                                            itertools.repeat(False))))
                and _equal(self.container_copies, old.container_copies))


def _identical(a, b):
    return len(a) == len(b) and all(map(operator.is_, a, b))


def _same_entries(now, before, of_module):
    """Whether a dictionary's entries are the same: tensors, modules and containers by
    identity, other values by equality; a module's ``training`` flag does not count
    (an engine runs its own copy in eval mode)."""
    if len(now) != len(before):
        return False
    for (key, value), (old_key, old_value) in zip(now, before):
        if key != old_key:
            return False
        if value is old_value or (of_module and key == "training"):
            continue
        if isinstance(value, (torch.Tensor, torch.nn.Module, dict, list, set)) \
                or not _equal(value, old_value):
            return False
    return True


def _equal(a, b):
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - not comparable (an array): not the same
        return False


def _content(value):
    # A list or set attribute can be changed in place: keep its content
    # (a subclass compares as its base type).
    for base in (list, set):
        if isinstance(value, base):
            return base(value)
    return value


def _attribute_objects(values):
    """The distinct plain objects among ``values`` whose fields are watched one level down."""
    found = {}
    for value in values:
        if _has_fields(value):
            found.setdefault(id(value), value)
    return list(found.values())


def _has_fields(value):
    return (isinstance(getattr(value, "__dict__", None), dict) and not callable(value)
            and not isinstance(value, (torch.nn.Module, torch.Tensor)))


def _tensors(values):
    """The distinct tensors among ``values`` (parameters, buffers, tensor attributes)."""
    return list({id(v): v for v in values if isinstance(v, torch.Tensor)}.values())


def _versions_work():
    """Whether dictionary version tags can be read, and change on every write (checked once)."""
    global _VERSIONS_CHECKED
    if _VERSIONS_CHECKED is None:
        _VERSIONS_CHECKED = _dict_version is not None and _versions_change()
    return _VERSIONS_CHECKED


def _versions_change():
    try:
        d = {"a": 1}
        seen = [_dict_version(d)]
        for write in (lambda: d.__setitem__("a", 2), lambda: d.__setitem__("b", 3),
                      lambda: d.pop("a"), lambda: d.update(c=4), d.clear):
            write()
            seen.append(_dict_version(d))
        return len(set(seen)) == len(seen)
    except Exception:  # noqa: BLE001 - unusable here: compare entries instead
        return False


try:  # CPython's dictionary version tag, as torch.compile's guards read it
    from torch._C._dynamo.guards import dict_version as _dict_version
except ImportError:  # pragma: no cover - another torch build
    _dict_version = None
_VERSIONS_CHECKED = None

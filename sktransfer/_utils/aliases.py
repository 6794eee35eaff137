"""Old import paths, in one place: which still work, until when, and which stay for good.

Two kinds of old path are kept, and they are treated differently:

- **Code aliases** (:data:`MOVED`): a module whose code moved elsewhere. Its
  old path keeps working for one more release and warns, on import, with the
  version that removes it.
- **Saved names** (:data:`SAVED_NAMES`): names that files written by earlier
  versions carry (a pickle names a class by its import path; a model file's
  scikit-learn part names ``sktransfer.serialization.EstimatorSlot``). They
  resolve silently and for good, since the user cannot rewrite what they
  saved.

This module imports nothing else from sktransfer, so an alias module can use
it without importing what it points to first.
"""

import importlib
import warnings

#: The release that removes the code aliases of :data:`MOVED`.
REMOVED_IN = "0.3.0"

#: ``{old module path: new module path}``: the code aliases. Importing one of
#: the old paths (or, for a module that also holds saved names, importing a
#: name other than those) raises a ``FutureWarning`` naming the new path.
MOVED = {
    "sktransfer.audio_inputs": "sktransfer.inputs.audio",
    "sktransfer.study_adaptation": "sktransfer.study.adaptation",
    "sktransfer.persistence.format": "sktransfer.saving.format",
    "sktransfer.persistence.reader": "sktransfer.saving.reader",
    "sktransfer.persistence.writer": "sktransfer.saving.writer",
    "sktransfer.backbones.state": "sktransfer.persistence",
}

#: ``{module path: names}`` that saved files name: served silently, for good.
SAVED_NAMES = {
    "sktransfer.backbones.state": ("PickledModule",),
    "sktransfer.regularizers": ("L2SP",),
    "sktransfer.serialization": ("EstimatorSlot",),
}


def warn_moved(old, name=None, stacklevel=3, new=None):
    """Warn that ``old`` (a module path of :data:`MOVED`, or ``old.name``) moved.

    ``new`` names the new home where it is more precise than ``MOVED[old]``.

    Examples
    --------
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_moved("sktransfer.audio_inputs")
    >>> print(caught[0].message)  # doctest: +ELLIPSIS
    sktransfer.audio_inputs moved to sktransfer.inputs.audio; the old path is removed in 0.3.0...
    """
    if old not in MOVED:
        raise KeyError(f"{old} is not a code alias of sktransfer._utils.aliases.MOVED")
    what = old if name is None else f"{old}.{name}"
    new = new or MOVED[old]
    warnings.warn(f"{what} moved to {new}; the old path is removed in {REMOVED_IN}. "
                  f"Import from {new} instead.", FutureWarning, stacklevel=stacklevel)


def moved_attribute(old, homes):
    """A module ``__getattr__`` for an alias that also holds saved names.

    The saved names are defined in the module itself (so a pickle finds
    them with no warning); a name of ``homes`` is imported from its new
    module after a ``FutureWarning`` naming that module, and any other name
    is an ``AttributeError``.

    Parameters
    ----------
    old : str
        The module's path, a key of :data:`MOVED`.
    homes : dict
        ``{name: the module path that now holds it}``.
    """

    def __getattr__(name):
        if name not in homes:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        warn_moved(old, name, new=homes[name])
        return getattr(importlib.import_module(homes[name]), name)

    return __getattr__

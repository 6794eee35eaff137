"""Old import paths of the names that turn networks into plain data.

Two kinds of name live here (see :mod:`sktransfer._utils.aliases`):

- ``PickledModule``, which pickles written by sktransfer 0.1.0 name as
  ``sktransfer.backbones.state.PickledModule``: a saved name, served
  silently and for good;
- every other name this module exported before (``UntrustedTypeError``,
  ``module_state``, ``backbone_state``...): code aliases that still work,
  with a ``FutureWarning`` naming their new home, until the release that
  removes them. Their code lives by concern in :mod:`sktransfer.persistence`
  (trust rules, codec, module trees) and :mod:`sktransfer.backbones`.
"""

from .._utils.aliases import moved_attribute
from ..persistence.modules import PickledModule

#: ``{old name: module that now holds it}``.
_HOMES = {
    **dict.fromkeys(("array_to_tensor", "check_json_able", "dtype_name", "from_plain",
                     "is_json_able", "non_json_values", "tensor_to_array", "to_plain"),
                    "sktransfer.persistence.codec"),
    **dict.fromkeys(("STATE_VERSION", "module_from_state", "module_state", "pack_modules",
                     "unpack_modules"), "sktransfer.persistence.modules"),
    **dict.fromkeys(("TRUSTED_PREFIXES", "UntrustedTypeError", "class_name", "class_names",
                     "is_trusted", "resolve_classes", "user_classes"),
                    "sktransfer.persistence.trust"),
    **dict.fromkeys(("backbone_from_state", "backbone_state"), "sktransfer.backbones.base"),
    **dict.fromkeys(("preprocess_from_state", "preprocess_state"),
                    "sktransfer.backbones.registry"),
}

__all__ = ["PickledModule", *sorted(_HOMES)]

__getattr__ = moved_attribute(__name__, _HOMES)

"""Old import paths of the names that turn networks into plain data.

Their code now lives by concern: trust rules in
:mod:`sktransfer.persistence.trust`, the tensor and JSON codec in
:mod:`sktransfer.persistence.codec`, the module-tree serializer and pickle
packing in :mod:`sktransfer.persistence.modules`, a backbone's state in
:mod:`sktransfer.backbones.base` and preprocess dispatch in
:mod:`sktransfer.backbones.registry`.

This module stays because pickles written by sktransfer 0.1.0 name
``sktransfer.backbones.state.PickledModule``, and
``sktransfer.backbones.state.UntrustedTypeError`` is where users have
caught that error; every name it exported before is still importable here.
New code imports from the modules above.
"""

from ..persistence.codec import (array_to_tensor, check_json_able, dtype_name, from_plain,
                                 is_json_able, non_json_values, tensor_to_array, to_plain)
from ..persistence.modules import (STATE_VERSION, PickledModule, module_from_state, module_state,
                                   pack_modules, unpack_modules)
from ..persistence.trust import (TRUSTED_PREFIXES, UntrustedTypeError, class_name, class_names,
                                 is_trusted, resolve_classes, user_classes)
from .base import backbone_from_state, backbone_state
from .registry import preprocess_from_state, preprocess_state

__all__ = [
    "STATE_VERSION", "TRUSTED_PREFIXES", "PickledModule", "UntrustedTypeError",
    "array_to_tensor", "backbone_from_state", "backbone_state", "check_json_able",
    "class_name", "class_names", "dtype_name", "from_plain", "is_json_able", "is_trusted",
    "module_from_state", "module_state", "non_json_values", "pack_modules",
    "preprocess_from_state", "preprocess_state", "resolve_classes", "tensor_to_array",
    "to_plain", "unpack_modules", "user_classes",
]

"""Where networks come from: the backbones room's public face.

:func:`load_backbone` turns a spec (``"torchvision:<name>"``,
``"timm:<name>"``, ``"hf:<model id or local directory>"``, an ``nn.Module``,
a fitted estimator, a :class:`Backbone`; see :mod:`.specs`) into a
:class:`Backbone`. Which source, family or modality a backbone has, how its
embedding pools and which weights it starts from are decided inside this
package: code outside it imports only the names below and asks the
:class:`Backbone` (:meth:`~Backbone.set_pooling`,
:meth:`~Backbone.layer_pooling`, :attr:`~Backbone.takes_images`), never a
source's module or class.
"""

# Imported for what they register: each source, when imported, puts its
# loader in SOURCES and how it saves and rebuilds its networks in the
# registry (in this order: SOURCES' order before there was a registry).
from . import torchvision, timm, huggingface  # noqa: F401
from .adapter_config import config_from_state as adapter_from_state
from .adapter_config import config_state as adapter_state
from .adapters import ADAPTERS, attach_adapter, check_adapter
from .base import Backbone, backbone_from_state, backbone_state, ordered_param_groups
from .loaded import load_backbone_cached
from .module import waveform_backbone
from .pooling import POOLINGS
from .reference import BaseNetworkError, self_contained
from .registry import SOURCES
from .specs import ACCEPTED, load_backbone

__all__ = ["ACCEPTED", "ADAPTERS", "BaseNetworkError", "adapter_from_state", "adapter_state", "attach_adapter",
           "check_adapter", "Backbone", "POOLINGS", "SOURCES", "backbone_from_state", "backbone_state",
           "load_backbone", "load_backbone_cached", "ordered_param_groups", "self_contained",
           "waveform_backbone"]

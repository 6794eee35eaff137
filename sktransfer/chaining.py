"""Chaining estimators: a fitted model as the backbone of the next one, under ``clone``.

``FineTunedClassifier(backbone=source)`` starts from the network ``source``
learned. ``sklearn.base.clone`` clones every parameter, and a clone of a
fitted estimator is an unfitted one, so without help every ``GridSearchCV``,
``cross_val_score`` or cloned ``Pipeline`` would hand the target a source
that knows nothing. :class:`KeepsTrainedBackbone` makes ``clone`` keep such a
source as the very same object instead. Sharing it is safe: the estimators
only read it (each fit trains its own copy of its network), so the source
stays as it was trained.
"""

import copy

from sklearn.base import clone

from .backbones import Backbone


def is_trained_source(obj):
    """Whether ``obj`` is a fitted estimator whose network can be a backbone.

    True for a fitted sktransfer estimator and for a
    :class:`sklearn.frozen.FrozenEstimator` wrapping one (it forwards
    ``backbone_``).

    Examples
    --------
    >>> from sktransfer import FineTunedClassifier
    >>> is_trained_source(FineTunedClassifier()), is_trained_source("torchvision:resnet18")
    (False, False)
    """
    return hasattr(obj, "get_params") and isinstance(getattr(obj, "backbone_", None), Backbone)


class KeepsTrainedBackbone:
    """Mixin: ``clone`` keeps a fitted estimator given as ``backbone`` as it is.

    Every other parameter is cloned as scikit-learn clones them; so are the
    ``set_output`` configuration and metadata-routing requests. Put it first
    among the bases, so its ``__sklearn_clone__`` is the one found.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.base import clone
    >>> from torch import nn
    >>> from sktransfer import FineTunedClassifier
    >>> X, y = np.random.RandomState(0).rand(20, 3).astype(np.float32), np.arange(20) % 2
    >>> source = FineTunedClassifier(nn.Sequential(nn.Linear(3, 4)), max_epochs=1).fit(X, y)
    >>> target = FineTunedClassifier(backbone=source, lr=0.01)
    >>> clone(target).backbone is source
    True
    """

    def __sklearn_clone__(self):
        params = self.get_params(deep=False)
        source = params.get("backbone")
        if not is_trained_source(source):
            return super().__sklearn_clone__()
        # What sklearn.base.clone does, except for the backbone: the source
        # keeps its training (a FrozenEstimator already clones to itself).
        params = {name: value if name == "backbone" else clone(value, safe=False)
                  for name, value in params.items()}
        twin = type(self)(**params)
        if hasattr(self, "_metadata_request"):
            twin._metadata_request = clone(self._metadata_request)
        if hasattr(self, "_sklearn_output_config"):
            twin._sklearn_output_config = copy.deepcopy(self._sklearn_output_config)
        return twin

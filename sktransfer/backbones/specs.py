"""Turning a backbone spec into a :class:`~sktransfer.backbones.base.Backbone`.

A spec is one of:

- ``"torchvision:<name>"`` (``resnet18``, ``resnet50``, ``vgg16``,
  ``efficientnet_b0``, ``vit_b_16``, ...),
- ``"timm:<name>"``,
- ``"hf:<model id or local directory>"`` for Hugging Face models
  (``"hf-text:"`` / ``"hf-image:"`` choose a tower of an image-text model),
- an ``nn.Module`` instance or a zero-argument callable returning one,
- a fitted sktransfer estimator (its backbone is reused), also wrapped in
  ``sklearn.frozen.FrozenEstimator``,
- a :class:`Backbone` instance, such as :func:`waveform_backbone`'s (a user's
  module on waveforms).
"""

from torch import nn

from .base import Backbone
from .module import from_backbone, from_module
from .registry import SOURCES

ACCEPTED = (
    "'torchvision:<name>', 'timm:<name>', 'hf:<model id or local directory>', an "
    "nn.Module, a zero-argument callable returning an nn.Module, a fitted sktransfer "
    "estimator, or a Backbone"
)


def load_backbone(spec, weights="DEFAULT", *, pooling="auto", image_size=None):
    """Resolve ``spec`` into a :class:`Backbone`.

    Parameters
    ----------
    spec : str, nn.Module, callable, fitted estimator or Backbone
        Where the network comes from (see the module docstring).
    weights : "DEFAULT", str, None or path, default="DEFAULT"
        ``"DEFAULT"``: the source's pretrained weights, through its usual cache
        (torch hub, Hugging Face hub), so it works offline once cached; for a
        module or fitted estimator, the weights it has. A torchvision weights
        tag such as ``"IMAGENET1K_V2"``. ``None``: random initialization. A
        path: a local ``.pt``/``.pth``/``.safetensors`` state dict, read
        without unpickling objects.
    pooling : str, default="auto"
        How the embedding is pooled: ``"auto"`` is the model's own (see
        :class:`~sktransfer.PretrainedFeatureTransformer`); for text
        encoders, a token pooling mode replaces it.
    image_size : int, optional
        For image backbones, the crop side fed to the network instead of the
        weights' own (the resize keeps the weights' resize/crop ratio).

    Returns
    -------
    Backbone

    Examples
    --------
    >>> bb = load_backbone("torchvision:resnet18", weights=None, image_size=64)
    >>> bb.modality, bb.out_dim, bb.preprocess.crop_size
    ('image', 512, 64)
    """
    if isinstance(spec, Backbone):
        return from_backbone(spec, weights)
    # sklearn.frozen.FrozenEstimator(fitted): the usual way to hand a fitted
    # model to something that clones (its clone is itself).
    spec = _unfrozen(spec)
    fitted = getattr(spec, "backbone_", None)
    if isinstance(fitted, Backbone):
        return from_backbone(fitted, weights)
    if isinstance(spec, str):
        source, sep, name = spec.partition(":")
        if not sep or source not in SOURCES or not name:
            raise ValueError(f"Unknown backbone spec {spec!r}. Accepted: {ACCEPTED}.")
        return SOURCES[source](name, weights, pooling=pooling, image_size=image_size)
    if isinstance(spec, nn.Module) or (callable(spec) and not hasattr(spec, "get_params")):
        return from_module(spec, weights)
    if hasattr(spec, "get_params"):
        raise ValueError(
            f"{type(spec).__name__} was given as backbone but is not fitted; fit it "
            "first, or pass its backbone spec."
        )
    raise TypeError(
        f"Unknown backbone of type {type(spec).__name__}. Accepted: {ACCEPTED}."
    )


def _unfrozen(spec):
    """The estimator inside a ``sklearn.frozen.FrozenEstimator``, else ``spec``."""
    try:
        from sklearn.frozen import FrozenEstimator
    except ImportError:  # scikit-learn < 1.6
        return spec
    return spec.estimator if isinstance(spec, FrozenEstimator) else spec

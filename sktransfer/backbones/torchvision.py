"""``"torchvision:<name>"`` backbones: weights enums, the torch hub cache,
local weight files, and preprocessing from ``weights.transforms()``."""

import os

import torch

from .base import Backbone, replace_last_linear
from .pooling import image_network_from_state, image_network_state
from .preprocess import ImagePreprocess
from .registry import register_source
from .weights import (DEFAULT, FILE, TAG, load_into, load_state_dict_file, resolve_weights,
                      weights_unavailable)


def load(name, weights="DEFAULT", *, image_size=None, **_):
    """Build a torchvision classification model as an embedding backbone.

    ``weights`` is ``"DEFAULT"``, a member name of the model's weights enum
    (e.g. ``"IMAGENET1K_V2"``), ``None`` or a path to a state dict file.
    """
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        known = ", ".join(sorted(torchvision.models.list_models(torchvision.models)))
        raise ValueError(
            f"torchvision has no classification model {name!r}; known models: {known}"
        ) from None
    enum = torchvision.models.get_model_weights(name)
    chosen = None
    kind, weights_id = resolve_weights(weights, tags=True)
    if kind in (DEFAULT, TAG):  # "DEFAULT" is a member of every weights enum
        try:
            chosen = enum[weights]
        except KeyError:
            raise ValueError(
                f"{name!r} has no weights {weights!r}; use one of "
                f"{['DEFAULT', *enum.__members__]}, None, or a path to a weight file"
            ) from None
        cache = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(chosen.url))
        try:
            model = builder(weights=chosen, progress=False)
        except OSError as exc:  # URLError is an OSError
            raise weights_unavailable(f"torchvision:{name} ({chosen})", cache, exc) from exc
        weights_id = str(chosen)
    else:
        model = builder(weights=None)

    head, out_dim = replace_last_linear(model)
    if kind == FILE:
        # A file saved from the full classifier and one saved from this
        # headless backbone both load: the old head is not part of the embedding.
        load_into(model, load_state_dict_file(weights), weights, drop_prefixes=(head + ".",))
    model.eval()
    preset = (chosen or enum.DEFAULT).transforms()
    crop, resize = preset.crop_size[0], preset.resize_size[0]
    if image_size is not None:
        resize, crop = round(image_size * resize / crop), int(image_size)
    preprocess = ImagePreprocess(resize, crop, preset.mean, preset.std,
                                 interpolation=preset.interpolation.value)
    return Backbone(model, preprocess, "image", f"torchvision:{name}", weights_id,
                    out_dim=out_dim, input_channels=3)


def network_from_state(name, network):
    """A randomly initialized ``torchvision:<name>`` network as ``network`` describes it."""
    return image_network_from_state(load(name, None).module, network, f"torchvision:{name}")


register_source("torchvision", load, image_network_state, network_from_state)

"""``"timm:<name>"`` backbones: timm's registry, its Hugging Face hub cache,
``pretrained_cfg`` preprocessing and ``group_matcher`` layer groups.

Models with a fixed input grid (timm's ``pretrained_cfg.fixed_input_size``:
ViT, DeiT, Swin, EVA, MLP-Mixer...) are built at ``image_size`` with timm's
``img_size``, and timm's own checkpoint filter resamples their position
embeddings (and relative-position tables) from the size they were trained at.
"""

import math
import os

from .base import Backbone
from .pooling import image_network_from_state, image_network_state
from .preprocess import ImagePreprocess
from .registry import register_source
from .weights import (DEFAULT, FILE, hub_cache_location, load_into, load_state_dict_file,
                      resolve_weights, weights_unavailable)


def _import_timm():
    try:
        import timm
    except ImportError as exc:
        raise ImportError(
            "timm backbones need the 'timm' package: pip install \"sktransfer[timm]\""
        ) from exc
    return timm


def load(name, weights="DEFAULT", *, image_size=None, **_):
    """Build a timm model without its classifier (``num_classes=0``).

    Parameters
    ----------
    name : str
        A name of timm's registry, with or without a pretrained tag.
    weights : "DEFAULT", None or path
        As :func:`~sktransfer.backbones.weights.resolve_weights` reads it.
    image_size : int, optional
        Side of the square crop the model sees. A model with a fixed input
        grid is also built at this size (timm's ``img_size``), its pretrained
        or file weights resampled to it; other models (CNNs) take any size
        as they are.

    Returns
    -------
    Backbone
    """
    timm = _import_timm()
    if not timm.list_models(name) and name not in timm.list_models(pretrained=True):
        raise ValueError(
            f"timm has no model {name!r}; see timm.list_models() for the names it knows"
        )
    kind, weights_id = resolve_weights(weights)
    img_size = _grid_size(timm, name, image_size)
    at_size = {} if img_size is None else {"img_size": img_size}
    if kind == DEFAULT:
        try:
            model = timm.create_model(name, pretrained=True, num_classes=0, **at_size)
        except (OSError, RuntimeError) as exc:
            cfg = timm.models.get_pretrained_cfg(name.split(".")[0])
            hub = getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None) or name
            raise weights_unavailable(f"timm:{name}", hub_cache_location(hub), exc) from exc
        weights_id = f"timm-pretrained:{model.pretrained_cfg.get('hf_hub_id') or name}"
    elif kind == FILE:
        model = _load_file(timm, name, weights)
        if img_size is not None:
            model = _resampled(timm, name, model, img_size)
    else:
        model = timm.create_model(name, pretrained=False, num_classes=0, **at_size)
    model.eval()

    cfg = timm.data.resolve_model_data_config(model)
    crop = int(cfg["input_size"][-1])
    if image_size is not None:
        crop = int(image_size)
    resize = int(math.floor(crop / cfg.get("crop_pct", 1.0)))
    preprocess = ImagePreprocess(resize, crop, cfg["mean"], cfg["std"],
                                 interpolation=cfg.get("interpolation", "bilinear"),
                                 channels=int(cfg["input_size"][0]))
    return Backbone(model, preprocess, "image", f"timm:{name}", weights_id,
                    out_dim=model.num_features, input_channels=int(cfg["input_size"][0]),
                    param_groups=_timm_groups(model))


def _grid_size(timm, name, image_size):
    """The ``img_size`` to build ``name`` at, or None to build it as registered.

    timm's own flag says which models fix their grid at construction and take
    ``img_size`` (it passes ``img_size`` from ``fixed_input_size`` configs
    itself); reading it, rather than trying the keyword, keeps a CNN's real
    construction errors visible. ``dynamic_img_size`` (interpolating at every
    forward) is not used: resampling once gives the model fine-tuning trains.
    """
    if image_size is None:
        return None
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.fixed_input_size:
        return None
    size = int(image_size)
    return None if tuple(cfg.input_size[-2:]) == (size, size) else size


def _load_file(timm, name, path):
    """The model at its registered size with the state dict in ``path``, checked strictly."""
    model = timm.create_model(name, pretrained=False, num_classes=0)
    head = model.pretrained_cfg.get("classifier") or "head"
    heads = head if isinstance(head, (tuple, list)) else (head,)
    return load_into(model, load_state_dict_file(path), path,
                     drop_prefixes=tuple(h + "." for h in heads))


def _resampled(timm, name, native, img_size):
    """``native``'s weights in the model built at ``img_size``, by timm's checkpoint filter.

    The weights were first loaded into the model at its registered size, so
    the file's errors read as for any size, and timm gets a state dict of its
    own format; its filter (the one ``pretrained=True`` runs) resamples what
    the grid changes. The overlay's ``num_classes=0`` says the weights are
    headless, which keeps timm's load strict.
    """
    overlay = {"state_dict": native.state_dict(), "source": None, "num_classes": 0}
    model = timm.create_model(name, pretrained=True, num_classes=0, img_size=img_size,
                              pretrained_cfg_overlay=overlay)
    # timm keeps the overlay in the model's config: drop the old tensors it holds.
    model.pretrained_cfg.pop("state_dict", None)
    return model


def _timm_groups(model):
    """timm's own ``group_matcher`` groups (stem, stages, head), named by module."""
    from timm.models import group_parameters

    try:
        grouped = group_parameters(model, model.group_matcher(coarse=False))
    except (AttributeError, NotImplementedError):
        return None
    groups = []
    for _, names in sorted(grouped.items()):
        modules = [n.split(".")[:-1] for n in names]
        prefix = os.path.commonprefix(modules) or modules[-1]
        groups.append((".".join(prefix), names))
    return groups


def network_state(backbone):
    """The pool, and the ``img_size`` a fixed-grid model was built at (when not its own)."""
    state = image_network_state(backbone)
    name = backbone.spec.split(":", 1)[1]
    size = _grid_size(_import_timm(), name, backbone.preprocess.crop_size)
    return state if size is None else {**state, "img_size": size}


#: The largest ``img_size`` a stored network may ask for: a file names the size
#: the network is built at before its tensors are read, so a crafted one could
#: otherwise make a position embedding of any size.
MAX_IMG_SIZE = 4096


def network_from_state(name, network):
    """A randomly initialized ``timm:<name>`` network as ``network`` describes it."""
    img_size = network.get("img_size")
    if img_size is not None and not (type(img_size) is int and 1 <= img_size <= MAX_IMG_SIZE):
        raise ValueError(f"the stored timm:{name} network names img_size={img_size!r}; "
                         f"expected an integer from 1 to {MAX_IMG_SIZE}")
    module = load(name, None, image_size=img_size).module
    return image_network_from_state(module, network, f"timm:{name}")


register_source("timm", load, network_state, network_from_state)

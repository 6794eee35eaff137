"""``"timm:<name>"`` backbones: timm's registry, its Hugging Face hub cache,
``pretrained_cfg`` preprocessing and ``group_matcher`` layer groups."""

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
    """Build a timm model without its classifier (``num_classes=0``)."""
    timm = _import_timm()
    if not timm.list_models(name) and name not in timm.list_models(pretrained=True):
        raise ValueError(
            f"timm has no model {name!r}; see timm.list_models() for the names it knows"
        )
    kind, weights_id = resolve_weights(weights)
    if kind == DEFAULT:
        try:
            model = timm.create_model(name, pretrained=True, num_classes=0)
        except (OSError, RuntimeError) as exc:
            cfg = timm.models.get_pretrained_cfg(name.split(".")[0])
            hub = getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None) or name
            raise weights_unavailable(f"timm:{name}", hub_cache_location(hub), exc) from exc
        weights_id = f"timm-pretrained:{model.pretrained_cfg.get('hf_hub_id') or name}"
    else:
        model = timm.create_model(name, pretrained=False, num_classes=0)
    if kind == FILE:
        head = model.pretrained_cfg.get("classifier") or "head"
        heads = head if isinstance(head, (tuple, list)) else (head,)
        load_into(model, load_state_dict_file(weights), weights,
                  drop_prefixes=tuple(h + "." for h in heads))
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


def network_from_state(name, network):
    """A randomly initialized ``timm:<name>`` network as ``network`` describes it."""
    return image_network_from_state(load(name, None).module, network, f"timm:{name}")


register_source("timm", load, image_network_state, network_from_state)

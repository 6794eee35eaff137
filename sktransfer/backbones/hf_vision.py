"""Hugging Face image encoders, and both towers of CLIP and SigLIP.

Which embedding an image model gives with ``pooling="auto"`` (the
Backbones page says the same), each the one its authors document:

- CLIP's image tower: the projected image features (what
  ``CLIPModel.get_image_features`` returns);
- SigLIP's image tower: the attention-pooling head's output (what
  ``SiglipModel.get_image_features`` returns);
- ViT and DeiT: the class token of the last (layer-normed) hidden states;
- DINOv2 (with or without registers), ConvNeXt, ResNet and other models
  that return one: ``pooler_output`` (for DINOv2 the normed class token).

``pooling=`` chooses another for token models: ``"cls"`` (the class token;
for CLIP after its post-layernorm), ``"avg"`` / ``"max"`` over the patch
tokens (class, distillation and register tokens left out) and ``"cls+avg"``
(both, concatenated); for convolutional models ``"avg"`` (their own average
pool) and ``"max"`` (a global max pool of the last feature map).

``"hf-text:<id>"`` of CLIP or SigLIP gives the text tower
(``get_text_features``: CLIP's projected end-of-text token, SigLIP's
pooler output), so image and text embeddings of one model compare.
Preprocessing comes from the model's saved image processor
(:mod:`.hf_image_preprocess`) or tokenizer.
"""

import inspect
import os

from torch import nn

from .base import Backbone
from .hf_image_preprocess import HFImagePreprocess
from .hf_loading import (config_from_dict, config_to_dict, import_transformers, load_model,
                         quiet_loading, skipped_init)
from .hf_text import Tokenize
from .pooling import IMAGE_TOKEN_POOLINGS, PoolingEncoder, pool_image_tokens
from .registry import register_preprocess
from .weights import (FILE, hub_cache_location, load_into, load_state_dict_file,
                      resolve_weights, weights_unavailable)

#: Image-text model types -> (image tower class, text tower class, text padding).
#: SigLIP was trained on texts padded to its full length (its authors say to
#: tokenize with padding="max_length"); CLIP pools its end-of-text token,
#: which padding leaves in place.
_TOWERS = {"clip": ("CLIPVisionModelWithProjection", "CLIPTextModelWithProjection", "longest"),
           "siglip": ("SiglipVisionModel", "SiglipTextModel", "max_length")}
#: Model types whose documented embedding is the class token of the last hidden states
#: (their pooler, a dense + tanh trained for no embedding, is dropped).
_CLS_TYPES = ("vit", "deit", "vit_msn")
#: Image models that normalize the class token after the encoder (the pooled output).
_CLS_NORM = {"clip_vision_model": "vision_model.post_layernorm"}


class ImageEncoder(PoolingEncoder, nn.Module):
    """A Hugging Face image model whose forward gives the chosen embedding ``(B, D)``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        The image model or image tower; called with ``pixel_values``.
    embedding : {"projected", "pooler", "cls"}
        What ``pooling="auto"`` gives: ``image_embeds``, ``pooler_output``
        or the class token of ``last_hidden_state``.
    pooling : str, default="auto"
        ``"auto"`` or one of :data:`~sktransfer.backbones.pooling.IMAGE_TOKEN_POOLINGS`
        (token models) / ``"avg"``, ``"mean"``, ``"max"`` (convolutional models).
    prefix_tokens : int or None, default=None
        Class, distillation and register tokens before the patches; None
        for a convolutional model (its last hidden state is a feature map).
    cls_norm : str or None, default=None
        Submodule that normalizes the class token for ``pooling="cls"``.
    interpolate : bool, default=False
        Ask the model to interpolate its position embeddings (an input side
        other than the one it was trained at).
    """

    hf_family = "vision"

    def __init__(self, model, embedding, pooling="auto", prefix_tokens=None, cls_norm=None,
                 interpolate=False):
        super().__init__()
        self.model = model
        self.embedding = str(embedding)
        self.prefix_tokens = None if prefix_tokens is None else int(prefix_tokens)
        self.cls_norm = cls_norm
        self.interpolate = bool(interpolate)
        self.set_pooling(pooling)

    def set_pooling(self, pooling, spec=None):
        """Pool by ``pooling`` from now on; a ValueError names what this model allows."""
        allowed = self.poolings()
        if self.prefix_tokens == 0 and pooling in IMAGE_TOKEN_POOLINGS and "cls" in pooling:
            raise ValueError(f"pooling={pooling!r} takes the class token, and "
                             f"{spec or type(self.model).__name__} has none; use one of "
                             f"{allowed}")
        if pooling not in allowed:
            kind = "an image transformer" if self.prefix_tokens is not None else "a CNN"
            raise ValueError(f"pooling={pooling!r} does not apply to "
                             f"{spec or type(self.model).__name__}, {kind} whose embedding "
                             f"pools by one of {allowed}")
        self.pooling = pooling

    def poolings(self):
        """The ``pooling`` values this model takes."""
        if self.prefix_tokens is None:
            return ("auto", "avg", "mean", "max")
        return ("auto",) + tuple(p for p in IMAGE_TOKEN_POOLINGS
                                 if self.prefix_tokens > 0 or "cls" not in p)

    def extra_repr(self):
        # Part of the feature cache's key (module_fingerprint reads the repr).
        return (f"embedding={self.embedding}, pooling={self.pooling}, "
                f"prefix_tokens={self.prefix_tokens}, interpolate={self.interpolate}")

    def forward(self, pixel_values):
        kwargs = {"interpolate_pos_encoding": True} if self.interpolate else {}
        out = self.model(pixel_values=pixel_values, **kwargs)
        mode = self.embedding if self.pooling == "auto" else self.pooling
        if mode == "projected":
            return out.image_embeds
        hidden = out.last_hidden_state
        if self.prefix_tokens is None:  # a CNN: (B, C, H, W)
            if mode == "max":
                return hidden.flatten(2).amax(2)
            mode = "pooler"  # "avg": the network's own global average pool
        if mode == "pooler":
            if out.pooler_output is None:
                raise ValueError(f"{type(self.model).__name__} returns no pooler_output; "
                                 "choose pooling='cls' or 'avg'")
            return out.pooler_output.flatten(1)
        norm = self.model.get_submodule(self.cls_norm) if self.cls_norm else None
        return pool_image_tokens(hidden, mode, self.prefix_tokens, norm)

    def out_dim(self):
        """Width of the embedding, or None when the config does not tell it."""
        config = self.model.config
        mode = self.embedding if self.pooling == "auto" else self.pooling
        if mode == "projected":
            return int(config.projection_dim)
        sizes = getattr(config, "hidden_sizes", None)
        width = sizes[-1] if sizes else getattr(config, "hidden_size", None)
        if width is None:
            return None
        return 2 * int(width) if mode == "cls+avg" else int(width)


class TowerTextEncoder(PoolingEncoder, nn.Module):
    """The text tower of an image-text model: ``get_text_features`` as a forward.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        ``CLIPTextModelWithProjection`` (gives ``text_embeds``) or
        ``SiglipTextModel`` (gives ``pooler_output``).
    """

    hf_family = "vision"

    def __init__(self, model):
        super().__init__()
        self.model = model
        # What the tokenizer may give that the model takes (SigLIP's takes no token types).
        self._accepts = tuple(inspect.signature(model.forward).parameters)

    def set_pooling(self, pooling, spec=None):
        """Only ``"auto"``: a text tower's embedding is the one it was trained to align."""
        if pooling != "auto":
            raise ValueError(f"pooling={pooling!r} does not apply to the text tower of "
                             f"{spec or type(self.model).__name__}: its embedding is the one "
                             "aligned with the image tower; use pooling='auto' (or layers=[...])")

    def forward(self, inputs):
        out = self.model(**{k: v for k, v in inputs.items() if k in self._accepts})
        embeds = getattr(out, "text_embeds", None)
        return embeds if embeds is not None else out.pooler_output

    def out_dim(self):
        config = self.model.config
        if hasattr(self.model, "text_projection"):
            return int(config.projection_dim)
        return int(config.hidden_size)


class PaddedTokenize(Tokenize):
    """:class:`~sktransfer.backbones.hf_text.Tokenize` padding every text to ``max_length``.

    SigLIP's text tower was trained on texts padded to its full length
    (64 tokens) and pools its last position, so its embedding of a text
    depends on that padding.
    """

    def __call__(self, texts):
        with self._lock:
            return dict(self.tokenizer(self._texts(texts), padding="max_length", truncation=True,
                                       max_length=self.max_length, return_tensors="pt"))

    def config(self):
        return ("max_length",) + super().config()

    def state(self):
        return {**super().state(), "kind": "tokenize-max-length"}


def load(transformers, name, config, weights, *, pooling="auto", image_size=None,
         tower="image", spec=None):
    """A :class:`~sktransfer.backbones.base.Backbone` for a Hugging Face image model's tower.

    Parameters
    ----------
    transformers : module
    name : str
        Hub id or local directory.
    config : transformers.PretrainedConfig
        The model's config (of the whole model for CLIP and SigLIP).
    weights : "DEFAULT", None or path
    pooling : str, default="auto"
        ``"auto"``: the embedding the model's authors document (see the
        module docstring); otherwise as :class:`ImageEncoder` takes it.
    image_size : int, optional
        Side of the square the image tower sees instead of its processor's.
    tower : {"image", "text"}, default="image"
        Which tower of an image-text model; a plain image model has only "image".
    spec : str, optional
        The spec the user gave (``"hf:<name>"`` by default).
    """
    spec = spec or f"hf:{name}"
    model_class, tower_config, padding = _tower(transformers, config, tower, spec)
    kind, weights_id = resolve_weights(weights)
    if kind != FILE:
        model, weights_id = load_model(transformers, name, tower_config, weights,
                                       model_class=model_class)
        _drop_unused_pooler(model)
    else:  # a local state dict, of the model or of its encoder
        model, _ = load_model(transformers, name, tower_config, None, model_class=model_class)
        _drop_unused_pooler(model)
        state = load_state_dict_file(weights)
        if state and all(k.startswith("model.") for k in state):
            state = {k.removeprefix("model."): v for k, v in state.items()}
        load_into(model, state, weights, drop_prefixes=("pooler.",) if _drops_pooler(model)
                  else ())
    if tower == "text":
        encoder = TowerTextEncoder(model)
        encoder.set_pooling(pooling, spec)
        tokenizer = _pretrained(transformers.AutoTokenizer, name, spec)
        limits = [tokenizer.model_max_length, getattr(tower_config, "max_position_embeddings",
                                                      None)]
        # The tokenizer's limit, capped by the position embeddings (as for text encoders).
        length = min((x for x in limits if isinstance(x, int) and 0 < x < 100_000), default=512)
        prep = (PaddedTokenize if padding == "max_length" else Tokenize)(tokenizer, length)
        return Backbone(encoder, prep, "text", spec, weights_id, out_dim=encoder.out_dim(),
                        param_groups=block_groups(encoder))
    processor = _pretrained(transformers.AutoImageProcessor, name, spec)
    prep = HFImagePreprocess.from_processor(processor, image_size, spec=spec)
    encoder = ImageEncoder(model, _embedding(model), prefix_tokens=_prefix_tokens(model),
                           cls_norm=_CLS_NORM.get(model.config.model_type),
                           interpolate=_needs_interpolation(model, prep))
    if pooling not in (None, "auto"):
        encoder.set_pooling(pooling, spec)
    channels = int(getattr(tower_config, "num_channels", 3))
    prep.channels = channels
    return Backbone(encoder, prep, "image", spec, weights_id, out_dim=encoder.out_dim(),
                    input_channels=channels, param_groups=block_groups(encoder))


def _tower(transformers, config, tower, spec):
    """``(model class, its config, text padding)`` of the tower to build."""
    if tower not in ("image", "text"):
        raise ValueError(f"tower must be 'image' or 'text'; got {tower!r}")
    if hasattr(config, "vision_config") and hasattr(config, "text_config"):
        if config.model_type not in _TOWERS:
            raise ValueError(f"{spec} is a {config.model_type} image-text model; sktransfer "
                             f"embeds the towers of {sorted(_TOWERS)} models")
        image_class, text_class, padding = _TOWERS[config.model_type]
        sub = config.vision_config if tower == "image" else config.text_config
        sub = type(sub).from_dict(sub.to_dict())  # a copy: the shared config stays as it was
        if hasattr(config, "projection_dim"):
            # The towers' own configs hold a default, not the model's projection width.
            sub.projection_dim = config.projection_dim
        return getattr(transformers, image_class if tower == "image" else text_class), sub, padding
    if tower == "text":
        raise ValueError(f"{spec}: {config.model_type} is an image model; it has no text tower")
    if config.model_type == "clip_vision_model" and "CLIPVisionModelWithProjection" in (
            config.architectures or ()):
        return transformers.CLIPVisionModelWithProjection, config, None
    return transformers.AutoModel, config, None


def _pretrained(auto_class, name, spec):
    """The tokenizer or image processor saved with the model (offline once cached)."""
    what = "image processor" if "Image" in auto_class.__name__ else "tokenizer"
    try:
        return auto_class.from_pretrained(name, trust_remote_code=False)
    except OSError as exc:
        if os.path.isdir(name):
            raise OSError(f"{spec}: {name} holds no {what} (saved with save_pretrained beside "
                          f"the model; for images preprocessor_config.json), which sktransfer "
                          f"reads the model's preprocessing from ({exc})") from exc
        raise weights_unavailable(spec, hub_cache_location(name), exc) from exc


def _drops_pooler(model):
    return model.config.model_type in _CLS_TYPES and getattr(model, "pooler", None) is not None


def _drop_unused_pooler(model):
    """Remove a ViT-style pooler: its output is not the embedding, and parameters that
    get no gradient would be trained for nothing (and stall distributed training)."""
    if _drops_pooler(model):
        model.pooler = None


def _embedding(model):
    if hasattr(model, "visual_projection"):
        return "projected"
    return "cls" if model.config.model_type in _CLS_TYPES else "pooler"


def _prefix_tokens(model):
    """Tokens before the patches (None for a CNN): class, distillation, registers."""
    if getattr(model.config, "hidden_sizes", None):
        return None
    emb = getattr(model, "embeddings", None)
    if emb is None:
        emb = getattr(getattr(model, "vision_model", None), "embeddings", None)
    if emb is None:
        return 0
    count = int(hasattr(emb, "cls_token") or hasattr(emb, "class_embedding"))
    count += int(getattr(emb, "distillation_token", None) is not None)
    registers = getattr(emb, "register_tokens", None)
    return count + (int(registers.shape[1]) if registers is not None else 0)


def _needs_interpolation(model, prep):
    """Whether the input side differs from the position embeddings' and the model can adapt."""
    trained = getattr(model.config, "image_size", None)
    size = prep.input_size
    if trained is None or size is None or _prefix_tokens(model) is None:
        return False
    trained = tuple(trained) if isinstance(trained, (list, tuple)) else (trained, trained)
    accepts = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
    return tuple(size) != trained and accepts


def block_groups(module):
    """Parameter groups input -> output: what precedes the blocks, each block, what follows.

    The blocks are the largest ``nn.ModuleList`` (a transformer's layers, a
    CNN's stages); every module beside it on its path from the root is a
    group of its own (embeddings, pre-norm; final norm, projection, head).

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.ModuleList([nn.Linear(2, 2)] * 1), nn.Linear(2, 1))
    >>> [name for name, _ in block_groups(net)]
    ['0', '1.0', '2']
    """
    lists = [(sum(p.numel() for p in m.parameters()), name) for name, m in module.named_modules()
             if isinstance(m, nn.ModuleList) and len(m)]
    blocks = max(lists)[1] if lists else None
    groups = []

    def visit(prefix, mod):
        direct = [prefix + n for n, _ in mod.named_parameters(recurse=False)]
        if direct:
            groups.append((prefix.rstrip("."), direct))
        for name, child in mod.named_children():
            full = prefix + name
            params = [f"{full}.{n}" for n, _ in child.named_parameters()]
            if not params:
                continue
            if full == blocks or (blocks and blocks.startswith(full + ".")):
                visit(full + ".", child)
            else:
                groups.append((full, params))

    visit("", module)
    return groups


def network_state(backbone):
    """What rebuilds a backbone's encoder offline: its class, config and embedding."""
    encoder = backbone.module
    state = {"model_class": type(encoder.model).__name__,
             "model_config": config_to_dict(encoder.model.config),
             "drop_pooler": getattr(encoder.model, "pooler", 0) is None}
    if isinstance(encoder, TowerTextEncoder):
        return {**state, "tower": "text"}
    return {**state, "tower": "image", "embedding": encoder.embedding,
            "pooling": encoder.pooling, "prefix_tokens": encoder.prefix_tokens,
            "cls_norm": encoder.cls_norm, "interpolate": encoder.interpolate}


def network_from_state(name, network):
    """A randomly initialized encoder from :func:`network_state` output, offline.

    ``name`` (the model id or directory) is not read: the model config came
    with the state. The class is looked up among transformers' model classes
    only, and built without remote code.
    """
    transformers = import_transformers()
    model_class = getattr(transformers, network["model_class"], None)
    if not (isinstance(model_class, type)
            and issubclass(model_class, transformers.PreTrainedModel)):
        raise ValueError(f"the saved {name} names {network['model_class']!r}, which is no "
                         "transformers model class")
    config = config_from_dict(transformers, network["model_config"])
    with quiet_loading(transformers), skipped_init():
        model = model_class._from_config(config)
    if network.get("drop_pooler"):
        model.pooler = None
    model.eval()
    if network["tower"] == "text":
        return TowerTextEncoder(model)
    return ImageEncoder(model, network["embedding"], network["pooling"],
                        network["prefix_tokens"], network["cls_norm"], network["interpolate"])


def _padded_from_state(state):
    return PaddedTokenize.from_state(state)


register_preprocess("tokenize-max-length", _padded_from_state)

"""A sentence-transformers model's pipeline, as its ``modules.json`` writes it down.

A sentence-transformers directory (or hub repo) lists its modules in
``modules.json``: a ``Transformer`` (the Hugging Face model, in the root or a
subfolder, with ``max_seq_length`` and ``do_lower_case`` in its
``sentence_bert_config.json``), then usually ``Pooling`` (which token
states make the sentence vector), optional ``Dense`` projections and
``Normalize``. ``config_sentence_transformers.json`` adds the prompts.
:func:`read_pipeline` reads all of it into a :class:`SentencePipeline`; the
modules that compute it (:class:`Dense`, :class:`Normalize`) are ours, built
from those files alone, so a model rebuilds offline from saved state and no
configured class path is ever imported: a ``Dense`` activation must be a
``torch.nn`` class.
"""

import json
import os
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from .hf_loading import model_file
from .pooling import SENTENCE_POOLINGS
from .weights import load_state_dict_file

_DEFAULT_ACTIVATION = "torch.nn.modules.activation.Tanh"  # sentence-transformers' default


@dataclass
class SentencePipeline:
    """What ``modules.json`` and the files beside it configure.

    Attributes
    ----------
    transformer_path : str
        Subfolder of the Hugging Face model ("" for the root).
    max_seq_length : int or None
    do_lower_case : bool
    pooling : tuple of str
        Pooling modes, concatenated in this order (sentence-transformers'
        names: ``"cls"``, ``"max"``, ``"mean"``, ``"mean_sqrt_len_tokens"``,
        ``"weightedmean"``, ``"lasttoken"``).
    include_prompt : bool
        Whether prompt tokens enter the pooling.
    dense : list of dict
        Each ``Dense`` module: ``path``, ``in_features``, ``out_features``,
        ``bias``, ``activation`` (a ``torch.nn`` class path).
    normalize : bool
        Whether the pipeline ends in ``Normalize`` (unit-length embeddings).
    prompts : dict of {str: str}
    default_prompt_name : str or None
    """

    transformer_path: str = ""
    max_seq_length: int = None
    do_lower_case: bool = False
    pooling: tuple = ("mean",)
    include_prompt: bool = True
    dense: list = field(default_factory=list)
    normalize: bool = False
    prompts: dict = field(default_factory=dict)
    default_prompt_name: str = None


def read_pipeline(name):
    """The :class:`SentencePipeline` of a model with ``modules.json``, else None.

    Parameters
    ----------
    name : str
        Local directory or hub id (read from the local hub cache only).

    Raises
    ------
    ValueError
        For a module sktransfer cannot reproduce exactly, named.
    """
    listing = model_file(name, "modules.json")
    if listing is None:
        return None
    pipeline = SentencePipeline()
    pooled = False
    for entry in sorted(_read_json(listing), key=lambda e: int(e.get("idx", 0))):
        kind = str(entry.get("type", "")).rsplit(".", 1)[-1]
        path = str(entry.get("path", "")).strip("/")
        config = _module_config(name, path, kind)
        if kind == "Transformer":
            pipeline.transformer_path = path
            pipeline.max_seq_length = config.get("max_seq_length")
            pipeline.do_lower_case = bool(config.get("do_lower_case", False))
        elif kind == "Pooling":
            pipeline.pooling = pooling_modes_of(config)
            pipeline.include_prompt = bool(config.get("include_prompt", True))
            pooled = True
        elif kind == "Dense":
            pipeline.dense.append({
                "path": path, "in_features": int(config["in_features"]),
                "out_features": int(config["out_features"]),
                "bias": bool(config.get("bias", True)),
                "activation": trusted_activation(config.get("activation_function"), name)})
        elif kind == "Normalize":
            pipeline.normalize = True
        else:
            raise ValueError(
                f"{name}: modules.json lists a {entry.get('type')!r} module; sktransfer "
                f"reproduces sentence-transformers pipelines of Transformer, Pooling, Dense "
                f"and Normalize modules only. Load the Hugging Face model alone with a "
                f"directory that has no modules.json, or embed with sentence-transformers.")
    if not pooled:
        raise ValueError(f"{name}: modules.json has no Pooling module, so the model gives "
                         f"token states rather than one embedding per text")
    extra = model_file(name, "config_sentence_transformers.json")
    if extra is not None:
        settings = _read_json(extra)
        pipeline.prompts = {str(k): str(v) for k, v in (settings.get("prompts") or {}).items()}
        pipeline.default_prompt_name = settings.get("default_prompt_name") or None
    return pipeline


def pooling_modes_of(config):
    """Pooling modes from a ``Pooling`` config, new (``pooling_mode``) or older style.

    Examples
    --------
    >>> pooling_modes_of({"pooling_mode": "cls"})
    ('cls',)
    >>> pooling_modes_of({"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True})
    ('max', 'mean')
    """
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    else:
        legacy = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                  "pooling_mode_mean_tokens": "mean",
                  "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                  "pooling_mode_weightedmean_tokens": "weightedmean",
                  "pooling_mode_lasttoken": "lasttoken"}
        modes = tuple(mode for key, mode in legacy.items() if config.get(key)) or ("mean",)
    unknown = [m for m in modes if m not in SENTENCE_POOLINGS]
    if unknown:
        raise ValueError(f"unknown sentence-transformers pooling mode(s) {unknown}; "
                         f"known: {SENTENCE_POOLINGS}")
    return modes


def trusted_activation(path, name=""):
    """The ``torch.nn`` class path of a ``Dense`` activation, checked.

    ``None`` (not written: sentence-transformers' default) is ``Tanh``.
    Anything outside ``torch.nn`` is refused: reading a model never imports
    code a file names.

    Examples
    --------
    >>> trusted_activation("torch.nn.modules.linear.Identity")
    'torch.nn.modules.linear.Identity'
    """
    path = _DEFAULT_ACTIVATION if path is None else str(path)
    cls = getattr(nn, path.rsplit(".", 1)[-1], None)
    if (not path.startswith("torch.nn.") or not isinstance(cls, type)
            or not issubclass(cls, nn.Module) or f"{cls.__module__}.{cls.__name__}" != path):
        raise ValueError(f"{name}: the Dense activation {path!r} is not a torch.nn module "
                         f"class; sktransfer imports no other code named in model files")
    return path


def activation_module(path):
    """A new instance of the trusted ``torch.nn`` activation ``path`` names."""
    return getattr(nn, trusted_activation(path).rsplit(".", 1)[-1])()


class Dense(nn.Module):
    """sentence-transformers' ``Dense``: ``activation(linear(x))``, same parameter names.

    Examples
    --------
    >>> Dense(4, 2, True, "torch.nn.modules.activation.Tanh")(torch.zeros(3, 4)).shape
    torch.Size([3, 2])
    """

    def __init__(self, in_features, out_features, bias=True, activation=_DEFAULT_ACTIVATION):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.activation_function = activation_module(activation)
        self.activation = activation

    def forward(self, x):
        return self.activation_function(self.linear(x))

    def spec(self):
        """Its constructor arguments (what saved state carries)."""
        return {"in_features": self.linear.in_features, "out_features": self.linear.out_features,
                "bias": self.linear.bias is not None, "activation": self.activation}


def dense_layers(name, pipeline, weights):
    """The pipeline's ``Dense`` modules, with their files' weights for ``"DEFAULT"``."""
    layers = []
    for spec in pipeline.dense:
        layer = Dense(spec["in_features"], spec["out_features"], spec["bias"],
                      spec["activation"])
        if weights == "DEFAULT":
            layer.load_state_dict(_dense_weights(name, spec["path"]))
        layers.append(layer)
    return layers


def normalize(x):
    """sentence-transformers' ``Normalize``: unit L2 length per row."""
    return F.normalize(x, p=2, dim=-1)


def _dense_weights(name, path):
    for fname in ("model.safetensors", "pytorch_model.bin"):
        found = model_file(name, f"{path}/{fname}" if path else fname)
        if found is not None:
            return {k: v for k, v in load_state_dict_file(found).items()
                    if isinstance(v, torch.Tensor)}
    raise FileNotFoundError(f"{name}: the Dense module in {path!r} has no model.safetensors "
                            f"or pytorch_model.bin")


def _module_config(name, path, kind):
    files = {"Transformer": "sentence_bert_config.json", "Pooling": "config.json",
             "Dense": "config.json"}
    if kind not in files:
        return {}
    found = model_file(name, f"{path}/{files[kind]}" if path else files[kind])
    if found is None:
        if kind == "Transformer":
            return {}
        raise FileNotFoundError(f"{name}: the {kind} module in {path!r} has no {files[kind]}")
    return _read_json(found)


def _read_json(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def resolve_prompt(prompts, default_prompt_name, prompt):
    """The prompt text to prepend: ``prompt`` by name or as text, else the model's default.

    Parameters
    ----------
    prompts : dict of {str: str}
        The model's named prompts.
    default_prompt_name : str or None
        The one sentence-transformers applies when none is asked for.
    prompt : str or None
        ``None``: the model's default prompt (none without one); a name in
        ``prompts``: that prompt; any other string: itself (``""`` for no
        prompt).

    Examples
    --------
    >>> prompts = {"query": "query: "}
    >>> [resolve_prompt(prompts, "query", p) for p in (None, "query", "Find: ", "")]
    ['query: ', 'query: ', 'Find: ', '']
    """
    if prompt is None:
        return prompts.get(default_prompt_name, "") if default_prompt_name else ""
    return prompts.get(prompt, prompt)

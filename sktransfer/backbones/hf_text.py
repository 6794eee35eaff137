"""Hugging Face text encoders: the model and its tokenizer, and for a
sentence-transformers model its whole pipeline.

Which embedding a text model gives (the Backbones page says the same):

- a directory or hub repo with ``modules.json`` (a sentence-transformers
  model): exactly what ``SentenceTransformer.encode`` gives: its pooling
  modes, ``Dense`` projections, ``Normalize``, ``max_seq_length``, lower
  casing and default prompt (:mod:`.sentence_pipeline`);
- any other model: the mean of its last hidden states over real tokens.

``pooling=`` other than ``"auto"`` replaces the pooling (a sentence pipeline
keeps its ``Dense`` and ``Normalize`` after it).
"""

import os
import threading

import torch
from torch import nn

from .._utils.files import read_folder, temporary_folder, write_folder
from .base import Backbone
from .hf_loading import (config_from_dict, config_to_dict, import_transformers, load_config,
                         load_model, quiet_loading, skipped_init)
from .pooling import PoolingEncoder, pool_tokens, token_pooling_modes
from .registry import register_preprocess
from .sentence_pipeline import (Dense, dense_layers, normalize, read_pipeline,
                                resolve_prompt)
from .weights import (FILE, hub_cache_location, load_into, load_state_dict_file,
                      resolve_weights, weights_unavailable)

_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


class TextEncoder(PoolingEncoder, nn.Module):
    """A Hugging Face encoder whose forward pools token states into ``(B, D)``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
    pooling : str or sequence of str, default="avg"
        Pooling modes (see :func:`~sktransfer.backbones.pooling.pool_tokens`),
        concatenated in the order given.
    dense : list of Dense, optional
        Projections applied after pooling, in order.
    normalize : bool, default=False
        Scale each embedding to unit length last.
    """

    hf_family = "text"

    def __init__(self, model, pooling="avg", dense=(), normalize=False):
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.dense = nn.ModuleList(dense)
        self.normalize = bool(normalize)

    @property
    def pooling(self):
        return self._pooling

    @pooling.setter
    def pooling(self, value):
        self._pooling = token_pooling_modes(value)

    def set_pooling(self, pooling, spec=None):
        """Pool tokens by ``pooling`` from now on (a ValueError lists the token poolings)."""
        self.pooling = pooling

    def extra_repr(self):
        # Part of the feature cache's key (module_fingerprint reads the repr).
        return f"pooling={self._pooling}, normalize={self.normalize}"

    def forward(self, inputs):
        out = self.model(**{k: v for k, v in inputs.items() if k in _MODEL_INPUTS})
        attention = inputs.get("attention_mask")
        mask = inputs.get("pooling_mask", attention)
        x = pool_tokens(out.last_hidden_state, mask, self._pooling, attention)
        for layer in self.dense:
            x = layer(x)
        return normalize(x) if self.normalize else x

    def out_dim(self):
        """Width of the embedding."""
        if len(self.dense):
            return self.dense[-1].linear.out_features
        config = self.model.config
        hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
        return None if hidden is None else hidden * len(self._pooling)


class Tokenize:
    """Tokenize a batch of strings, padded to the longest, truncated to ``max_length``.

    Parameters
    ----------
    tokenizer : transformers tokenizer
    max_length : int
    prompt : str, default=""
        Prepended to every text (a sentence-transformers prompt).
    lowercase : bool, default=False
        Lower-case texts first (a pipeline's ``do_lower_case``).
    exclude_prompt : bool, default=False
        Leave the prompt's tokens out of the pooling (a pipeline whose
        ``Pooling`` has ``include_prompt=False``): the batch then carries a
        ``pooling_mask``.
    prompts : dict of {str: str}, optional
        The model's named prompts; ``default_prompt_name`` names the one
        applied unless another is chosen (:meth:`use_prompt`).
    """

    def __init__(self, tokenizer, max_length, prompt="", lowercase=False, exclude_prompt=False,
                 prompts=None, default_prompt_name=None):
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.prompt = str(prompt)
        self.lowercase = bool(lowercase)
        self.exclude_prompt = bool(exclude_prompt)
        self.prompts = dict(prompts or {})
        self.default_prompt_name = default_prompt_name
        # A fast tokenizer switches its padding and truncation settings per
        # call, in place: two threads tokenizing at once would fail with
        # "Already borrowed" or pad with the other call's settings.
        self._lock = threading.Lock()

    def use_prompt(self, prompt):
        """Prepend ``prompt`` (a name among :attr:`prompts`, a text, or None: the default)."""
        self.prompt = resolve_prompt(self.prompts, self.default_prompt_name, prompt)

    def _texts(self, texts):
        texts = [self.prompt + t for t in texts] if self.prompt else list(texts)
        return [t.lower() for t in texts] if self.lowercase else texts

    def __call__(self, texts):
        with self._lock:
            batch = dict(self.tokenizer(self._texts(texts), padding=True, truncation=True,
                                        max_length=self.max_length, return_tensors="pt"))
            if self.exclude_prompt and self.prompt:
                batch["pooling_mask"] = _without_prompt(batch["attention_mask"],
                                                        self._prompt_length())
        return batch

    def _prompt_length(self):
        """Tokens of the prompt alone, less a trailing special token (as sentence-transformers
        counts them)."""
        ids = self.tokenizer([self._texts([""])[0]], truncation=True,
                             max_length=self.max_length)["input_ids"][0]
        if ids and ids[-1] in self.tokenizer.all_special_ids:
            return len(ids) - 1
        return len(ids)

    def lengths(self, texts):
        """Token counts after truncation: batches sorted by them pad the least.

        Sorting by characters pads measurably more (words tokenize to one or
        several pieces), and a fast tokenizer counts a whole list quickly.
        """
        with self._lock:
            ids = self.tokenizer(self._texts(texts), truncation=True,
                                 max_length=self.max_length)["input_ids"]
        return [len(row) for row in ids]

    def config(self):
        return (type(self.tokenizer).__name__, self.tokenizer.name_or_path, self.max_length,
                self.prompt, self.lowercase, self.exclude_prompt)

    # Pickles and saved files carry the tokenizer as its files (what
    # save_pretrained writes), not as a pickled tokenizer object, and load
    # without the original directory or the network.

    def state(self):
        """``{"kind": "tokenize", "max_length", "name_or_path", "files", ...}``.

        ``files`` maps each file ``save_pretrained`` writes to its text (or
        bytes for a binary file such as a sentencepiece model); the rest are
        the constructor's arguments.
        """
        files = self.__dict__.get("_files")
        if files is None:
            with temporary_folder() as folder:
                self.tokenizer.save_pretrained(folder)
                files = read_folder(folder)
            self._files = files  # the tokenizer does not change: written once
        return {"kind": "tokenize", "max_length": self.max_length,
                "name_or_path": self.tokenizer.name_or_path, "files": dict(files),
                "prompt": self.prompt, "lowercase": self.lowercase,
                "exclude_prompt": self.exclude_prompt, "prompts": dict(self.prompts),
                "default_prompt_name": self.default_prompt_name}

    @classmethod
    def from_state(cls, state):
        """The preprocess :meth:`state` described, offline."""
        transformers = import_transformers()
        with temporary_folder() as folder, quiet_loading(transformers):
            write_folder(state["files"], folder)
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        # Keep the original name: it is part of feature-cache keys.
        tokenizer.name_or_path = state["name_or_path"]
        # Files written before prompts existed hold none of the keys below.
        prep = cls(tokenizer, state["max_length"], prompt=state.get("prompt", ""),
                   lowercase=state.get("lowercase", False),
                   exclude_prompt=state.get("exclude_prompt", False),
                   prompts=state.get("prompts"),
                   default_prompt_name=state.get("default_prompt_name"))
        prep._files = dict(state["files"])
        return prep

    def __getstate__(self):
        return self.state()

    def __deepcopy__(self, memo):
        # The copies share the tokenizer and its lock: it is only read, its
        # per-call settings are switched under the lock, and every fit copies
        # the backbone (a copy of a large vocabulary each time is memory).
        # (Not copy.copy: it would go through the pickle form, the files.)
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.prompts = dict(self.prompts)
        if hasattr(self, "_files"):
            clone._files = dict(self._files)
        return clone

    def __setstate__(self, state):
        self.__dict__.update(type(self).from_state(state).__dict__)


def _without_prompt(attention_mask, prompt_length):
    """``attention_mask`` with the first ``prompt_length`` real tokens of each row zeroed."""
    start = attention_mask.to(torch.int32).argmax(1, keepdim=True)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return attention_mask * (positions >= start + prompt_length).to(attention_mask.dtype)


def network_state(backbone):
    """What rebuilds a backbone's :class:`TextEncoder` offline: pooling, pipeline, model config."""
    encoder = backbone.module
    return {"pooling": list(encoder.pooling), "model_config": config_to_dict(encoder.model.config),
            "dense": [layer.spec() for layer in encoder.dense], "normalize": encoder.normalize}


def network_from_state(name, network):
    """A randomly initialized :class:`TextEncoder` from :func:`network_state` output.

    ``name`` (the model id or directory) is not read: the model config came
    with the state, so no hub or original directory is needed.
    """
    transformers = import_transformers()
    config = config_from_dict(transformers, network["model_config"])
    with quiet_loading(transformers), skipped_init():
        model = transformers.AutoModel.from_config(config, trust_remote_code=False)
    model.eval()
    dense = [Dense(**spec) for spec in network.get("dense", ())]
    return TextEncoder(model, network["pooling"], dense, network.get("normalize", False))


def _unwrap_encoder_keys(state):
    """Accept a state dict saved from the :class:`TextEncoder` (keys ``model.*``).

    ``torch.save(est.backbone_.module.state_dict(), path)`` writes the
    wrapper's keys; the Hugging Face model itself has them without the prefix.
    """
    if state and all(k.startswith("model.") for k in state):
        return {k.removeprefix("model."): v for k, v in state.items()}
    return state


def load(transformers, name, config, weights, *, pooling="auto", spec=None):
    """A text :class:`~sktransfer.backbones.base.Backbone` for a Hugging Face model.

    Parameters
    ----------
    transformers : module
    name : str
        Hub id or local directory.
    config : transformers.PretrainedConfig
    weights : "DEFAULT", None or path
    pooling : str, default="auto"
        ``"auto"``: the pipeline's pooling, or mean pooling without one.
    spec : str, optional
        The spec the user gave (``"hf:<name>"`` by default).
    """
    pipeline = read_pipeline(name)
    sub = pipeline.transformer_path if pipeline is not None else ""
    if sub:
        config = load_config(transformers, name, subfolder=sub)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name, trust_remote_code=False,
                                                               **_sub(sub))
    except OSError as exc:
        if os.path.isdir(name):
            raise
        raise weights_unavailable(f"hf:{name}", hub_cache_location(name), exc) from exc
    kind, weights_id = resolve_weights(weights)
    if pipeline is not None and kind == FILE:
        # A local state dict of the whole encoder (pooling, Dense): the model and projections.
        model, _ = load_model(transformers, name, config, None)
        dense = dense_layers(name, pipeline, None)
        encoder = TextEncoder(model, pipeline.pooling, dense, pipeline.normalize)
        _load_encoder_state(encoder, weights)
    else:
        model, weights_id = load_model(transformers, name, config, weights, subfolder=sub,
                                       unwrap=_unwrap_encoder_keys)
        dense = dense_layers(name, pipeline, weights) if pipeline is not None else []
        encoder = TextEncoder(model, pipeline.pooling if pipeline is not None else "mean",
                              dense, pipeline is not None and pipeline.normalize)
    if pooling not in (None, "auto"):
        encoder.pooling = pooling
    _check_dense_width(encoder, spec or f"hf:{name}")
    prep = Tokenize(tokenizer, _max_length(pipeline, tokenizer, config),
                    lowercase=pipeline is not None and pipeline.do_lower_case,
                    exclude_prompt=pipeline is not None and not pipeline.include_prompt,
                    prompts=pipeline.prompts if pipeline is not None else None,
                    default_prompt_name=pipeline.default_prompt_name if pipeline else None)
    prep.use_prompt(None)
    return Backbone(encoder, prep, "text", spec or f"hf:{name}", weights_id,
                    out_dim=encoder.out_dim())


def _sub(subfolder):
    return {"subfolder": subfolder} if subfolder else {}


def _load_encoder_state(encoder, path):
    """Load a local state dict into a pipeline's encoder: the whole of it, or the model alone.

    The model alone leaves nothing for the pipeline's ``Dense`` modules,
    which would stay random: that is refused rather than guessed.
    """
    state = load_state_dict_file(path)
    if any(k.startswith(("model.", "dense.")) for k in state):
        load_into(encoder, state, path)
    elif len(encoder.dense):
        raise ValueError(f"weights file {os.fspath(path)!r} holds the Hugging Face model "
                         f"alone, and this sentence-transformers pipeline has Dense modules "
                         f"too; save the whole encoder, est.backbone_.module.state_dict()")
    else:
        load_into(encoder.model, state, path)


def _check_dense_width(encoder, spec):
    if not len(encoder.dense):
        return
    hidden = encoder.model.config.hidden_size * len(encoder.pooling)
    wanted = encoder.dense[0].linear.in_features
    if hidden != wanted:
        raise ValueError(f"pooling={list(encoder.pooling)} gives {hidden} features, but the "
                         f"first Dense module of {spec} takes {wanted}; choose as many pooling "
                         f"modes as the model's own Pooling module has, or pooling='auto'")


#: Model types whose position ids start after the padding index (Hugging Face's
#: ``create_position_ids_from_input_ids``), so ``max_position_embeddings`` holds
#: ``pad_token_id + 1`` positions no token uses.
_OFFSET_POSITIONS = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert",
                               "roberta-prelayernorm", "mpnet", "longformer", "data2vec-text",
                               "ibert", "luke", "markuplm", "xmod", "ernie_m"})


def _max_length(pipeline, tokenizer, config):
    """The sequence length the model was trained for.

    A sentence-transformers pipeline records it (``max_seq_length``);
    otherwise the tokenizer's limit, capped by the position embeddings.
    """
    if pipeline is not None and pipeline.max_seq_length:
        return int(pipeline.max_seq_length)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and getattr(config, "model_type", None) in _OFFSET_POSITIONS:
        # These number positions from pad_token_id + 1 (RoBERTa's 514 hold 512 tokens).
        positions -= (getattr(config, "pad_token_id", None) or 0) + 1
    limits = [tokenizer.model_max_length, positions]
    limits = [x for x in limits if isinstance(x, int) and 0 < x < 100_000]
    return min(limits) if limits else 512


register_preprocess("tokenize", Tokenize.from_state)

"""``"hf:<model id or local directory>"`` text encoders: AutoModel and its
tokenizer, with mean (default), CLS or max pooling over tokens."""

import contextlib
import copy
import json
import os
import threading

from torch import nn

from .._utils.files import read_folder, temporary_folder, write_folder
from .base import Backbone
from .pooling import TOKEN_POOLINGS, pool_tokens
from .registry import register_preprocess, register_source
from .weights import (hub_cache_location, is_weights_path, load_into, load_state_dict_file,
                      weights_unavailable)


def _import_transformers():
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(
            "Hugging Face backbones need the 'transformers' package: "
            "pip install \"sktransfer[text]\""
        ) from exc
    return transformers


class TextEncoder(nn.Module):
    """A Hugging Face encoder whose forward pools token states into ``(B, D)``."""

    def __init__(self, model, pooling="avg"):
        super().__init__()
        if pooling not in TOKEN_POOLINGS:
            raise ValueError(f"pooling for text must be one of {TOKEN_POOLINGS}, got {pooling!r}")
        self.model = model
        self.pooling = pooling

    def forward(self, inputs):
        out = self.model(**inputs)
        return pool_tokens(out.last_hidden_state, inputs.get("attention_mask"), self.pooling)


class Tokenize:
    """Tokenize a batch of strings, padded to the longest, truncated to ``max_length``."""

    def __init__(self, tokenizer, max_length):
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        # A fast tokenizer switches its padding and truncation settings per
        # call, in place: two threads tokenizing at once would fail with
        # "Already borrowed" or pad with the other call's settings.
        self._lock = threading.Lock()

    def __call__(self, texts):
        with self._lock:
            return dict(self.tokenizer(list(texts), padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt"))

    def lengths(self, texts):
        """Token counts after truncation: batches sorted by them pad the least.

        Sorting by characters pads measurably more (words tokenize to one or
        several pieces), and a fast tokenizer counts a whole list quickly.
        """
        with self._lock:
            ids = self.tokenizer(list(texts), truncation=True,
                                 max_length=self.max_length)["input_ids"]
        return [len(row) for row in ids]

    def config(self):
        return (type(self.tokenizer).__name__, self.tokenizer.name_or_path, self.max_length)

    # Pickles and saved files carry the tokenizer as its files (what
    # save_pretrained writes), not as a pickled tokenizer object, and load
    # without the original directory or the network.

    def state(self):
        """``{"kind": "tokenize", "max_length", "name_or_path", "files"}``.

        ``files`` maps each file ``save_pretrained`` writes to its text (or
        bytes for a binary file such as a sentencepiece model).
        """
        files = self.__dict__.get("_files")
        if files is None:
            with temporary_folder() as folder:
                self.tokenizer.save_pretrained(folder)
                files = read_folder(folder)
            self._files = files  # the tokenizer does not change: written once
        return {"kind": "tokenize", "max_length": self.max_length,
                "name_or_path": self.tokenizer.name_or_path, "files": dict(files)}

    @classmethod
    def from_state(cls, state):
        """The preprocess :meth:`state` described, offline."""
        transformers = _import_transformers()
        with temporary_folder() as folder, _quiet_loading(transformers):
            write_folder(state["files"], folder)
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        # Keep the original name: it is part of feature-cache keys.
        tokenizer.name_or_path = state["name_or_path"]
        prep = cls(tokenizer, state["max_length"])
        prep._files = dict(state["files"])
        return prep

    def __getstate__(self):
        return self.state()

    def __deepcopy__(self, memo):
        # Copy the tokenizer object itself: the same result as going through
        # the files above, without writing and reading them per copy.
        clone = type(self)(copy.deepcopy(self.tokenizer, memo), self.max_length)
        if "_files" in self.__dict__:
            clone._files = self._files
        return clone

    def __setstate__(self, state):
        self.__dict__.update(type(self).from_state(state).__dict__)


def network_state(backbone):
    """What rebuilds a backbone's :class:`TextEncoder` offline: pooling and the model config."""
    encoder = backbone.module
    # Through JSON: label maps are keyed by int, which JSON (and skops) writes as str.
    config = json.loads(encoder.model.config.to_json_string(use_diff=False))
    return {"pooling": encoder.pooling, "model_config": config}


def network_from_state(name, network):
    """A randomly initialized :class:`TextEncoder` from :func:`network_state` output.

    ``name`` (the model id or directory) is not read: the model config came
    with the state, so no hub or original directory is needed.
    """
    transformers = _import_transformers()
    model_config = dict(network["model_config"])
    config_class = type(transformers.AutoConfig.for_model(model_config["model_type"]))
    with _quiet_loading(transformers), _skipped_init():
        model = transformers.AutoModel.from_config(config_class.from_dict(model_config),
                                                   trust_remote_code=False)
    model.eval()
    return TextEncoder(model, network["pooling"])


def _skipped_init():
    """Skip random initialization where transformers allows it: the weights
    are overwritten by the carried state dict (strictly) right after."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        return contextlib.nullcontext()
    return no_init_weights()


def _unwrap_encoder_keys(state):
    """Accept a state dict saved from the :class:`TextEncoder` (keys ``model.*``).

    ``torch.save(est.backbone_.module.state_dict(), path)`` writes the
    wrapper's keys; the Hugging Face model itself has them without the prefix.
    """
    if state and all(k.startswith("model.") for k in state):
        return {k.removeprefix("model."): v for k, v in state.items()}
    return state


@contextlib.contextmanager
def _quiet_loading(transformers):
    """Hide transformers' per-load progress bar (a search loads many clones)."""
    logging = transformers.utils.logging
    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def load(name, weights="DEFAULT", *, pooling="avg", **_):
    """Load an encoder and its tokenizer from a hub id or a local directory."""
    transformers = _import_transformers()
    with _quiet_loading(transformers):
        return _load(transformers, name, weights, pooling)


def _load(transformers, name, weights, pooling):
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name)
        config = transformers.AutoConfig.from_pretrained(name)
        if weights == "DEFAULT":
            model = transformers.AutoModel.from_pretrained(name)
            weights_id = f"hf:{os.path.abspath(name) if os.path.isdir(name) else name}"
        elif weights is None or is_weights_path(weights):
            model = transformers.AutoModel.from_config(config)
            weights_id = "random"
            if weights is not None:
                load_into(model, _unwrap_encoder_keys(load_state_dict_file(weights)), weights)
                weights_id = f"file:{os.path.abspath(weights)}"
        else:
            raise ValueError(f"weights must be 'DEFAULT', None or a path; got {weights!r}")
    except OSError as exc:
        if os.path.isdir(name) or (weights is not None and weights != "DEFAULT"):
            raise
        raise weights_unavailable(f"hf:{name}", hub_cache_location(name), exc) from exc
    model.eval()
    encoder = TextEncoder(model, "avg" if pooling == "mean" else pooling)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
    return Backbone(encoder, Tokenize(tokenizer, _max_length(name, tokenizer, config)), "text",
                    f"hf:{name}", weights_id, out_dim=hidden)


def _max_length(name, tokenizer, config):
    """The sequence length the model was trained for.

    A sentence-transformers directory records it in ``sentence_bert_config.json``;
    otherwise the tokenizer's limit, capped by the position embeddings.
    """
    st_config = os.path.join(name, "sentence_bert_config.json")
    if os.path.isfile(st_config):
        with open(st_config) as fh:
            length = json.load(fh).get("max_seq_length")
        if length:
            return int(length)
    limits = [tokenizer.model_max_length, getattr(config, "max_position_embeddings", None)]
    limits = [x for x in limits if isinstance(x, int) and 0 < x < 100_000]
    return min(limits) if limits else 512


register_source("hf", load, network_state, network_from_state)
register_preprocess("tokenize", Tokenize.from_state)

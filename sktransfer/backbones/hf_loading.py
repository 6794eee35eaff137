"""What every Hugging Face backbone shares: importing transformers, loading a
model's config, its weights (pretrained, random, or a local state dict) and
the files beside it, quietly and offline once cached.

A leaf of the ``"hf:"`` sources: :mod:`.hf_text` and :mod:`.hf_vision` load
their networks through it, and :mod:`.huggingface` picks which of them a
model is for.
"""

import contextlib
import os

from .weights import (DEFAULT, FILE, hub_cache_location, load_into, load_state_dict_file,
                      resolve_weights, weights_unavailable)


def import_transformers():
    """``transformers``, or an ImportError naming the extra to install."""
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(
            "Hugging Face backbones need the 'transformers' package: "
            "pip install \"sktransfer[text]\""
        ) from exc
    return transformers


@contextlib.contextmanager
def quiet_loading(transformers):
    """Hide transformers' per-load progress bar (a search loads many clones)."""
    logging = transformers.utils.logging
    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def skipped_init():
    """Skip random initialization where transformers allows it: the weights
    are overwritten by the carried state dict (strictly) right after."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        return contextlib.nullcontext()
    return no_init_weights()


def config_from_dict(transformers, model_config):
    """The model config a saved ``config.to_dict()`` describes, offline."""
    config_class = type(transformers.AutoConfig.for_model(model_config["model_type"]))
    return config_class.from_dict(dict(model_config))


def config_to_dict(config):
    """A model config as JSON-able values (what pickles and saved files carry).

    Through JSON: label maps are keyed by int, which JSON (and skops) writes
    as str.
    """
    import json

    return json.loads(config.to_json_string(use_diff=False))


def model_file(name, filename):
    """The local path of ``filename`` in a model directory or a cached hub repo, or None.

    Reads only what is on disk (a hub id resolves through the local hub
    cache, never the network), so a missing optional file (``modules.json``)
    simply means the model has none.

    Examples
    --------
    >>> import tempfile
    >>> model_file(tempfile.mkdtemp(), "modules.json") is None
    True
    """
    if os.path.isdir(name):
        path = os.path.join(name, filename)
        return path if os.path.isfile(path) else None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(name, filename)
    except ValueError:  # not a valid repo id
        return None
    return found if isinstance(found, str) else None


def load_model(transformers, name, config, weights, *, model_class=None, subfolder="",
               unwrap=None):
    """A Hugging Face model with the weights ``weights`` names, in eval mode.

    Parameters
    ----------
    transformers : module
    name : str
        Hub id or local directory (named in errors).
    config : transformers.PretrainedConfig
        The model's config, already loaded.
    weights : "DEFAULT", None or path
        ``"DEFAULT"``: the model's own pretrained weights (local directory or
        hub cache); ``None``: random initialization; a path: a local state
        dict, read without unpickling objects.
    model_class : class, optional
        The transformers class to build (``CLIPVisionModelWithProjection``);
        ``AutoModel`` by default.
    subfolder : str, default=""
        Where the model's files sit inside ``name`` (a sentence-transformers
        pipeline may keep its transformer in a subfolder).
    unwrap : callable, optional
        ``unwrap(state) -> state`` applied to a local state dict first (to
        accept the keys of sktransfer's own wrapper modules).

    Returns
    -------
    model : transformers.PreTrainedModel
    weights_id : str
        Identifies the weights (used in cache keys).
    """
    model_class = model_class or transformers.AutoModel
    kind, weights_id = resolve_weights(weights)
    try:
        if kind == DEFAULT:
            kwargs = {"subfolder": subfolder} if subfolder else {}
            model = model_class.from_pretrained(name, config=config, trust_remote_code=False,
                                                **kwargs)
            weights_id = f"hf:{os.path.abspath(name) if os.path.isdir(name) else name}"
        else:
            # AutoModel builds from a config with from_config, a concrete
            # class (CLIPVisionModelWithProjection) with _from_config.
            auto = getattr(model_class, "from_config", None)
            model = (auto(config, trust_remote_code=False) if auto is not None
                     else model_class._from_config(config))
            if kind == FILE:
                state = load_state_dict_file(weights)
                load_into(model, unwrap(state) if unwrap else state, weights)
    except OSError as exc:
        if os.path.isdir(name) or kind == FILE:
            raise
        raise weights_unavailable(f"hf:{name}", hub_cache_location(name), exc) from exc
    model.eval()
    return model, weights_id


def load_config(transformers, name, subfolder=""):
    """``AutoConfig`` of ``name``, with a clear error when it cannot be had offline."""
    try:
        kwargs = {"subfolder": subfolder} if subfolder else {}
        # Explicit: a folder's own code (auto_map) is never run, nor asked about.
        return transformers.AutoConfig.from_pretrained(name, trust_remote_code=False, **kwargs)
    except OSError as exc:
        if os.path.isdir(name):
            raise
        raise weights_unavailable(f"hf:{name}", hub_cache_location(name), exc) from exc

"""The ``weights=`` choice of every source, reading weight files safely, and
explaining missing pretrained weights."""

import os
from typing import NamedTuple

import torch

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")

#: The kinds of ``weights=`` choice :func:`resolve_weights` tells apart.
DEFAULT, TAG, RANDOM, FILE = "default", "tag", "random", "file"


def is_weights_path(weights):
    """True when ``weights`` names a local file rather than a weights tag."""
    return isinstance(weights, (str, os.PathLike)) and (
        str(weights).endswith(WEIGHT_SUFFIXES) or os.sep in str(weights)
    )


class Weights(NamedTuple):
    """A ``weights=`` choice, as :func:`resolve_weights` read it.

    Attributes
    ----------
    kind : {"default", "tag", "random", "file"}
    weights_id : str or None
        ``"random"``, or ``"file:<absolute path>"``; None for ``"default"``
        and ``"tag"``, whose identity the source names (a hub id, a
        torchvision enum member).
    """

    kind: str
    weights_id: object


def resolve_weights(weights, *, tags=False, what="weights", accepted=None):
    """Which ``weights=`` choice ``weights`` is: the one switch every source reads.

    Parameters
    ----------
    weights : "DEFAULT", str, None or path
        ``"DEFAULT"``: the source's pretrained weights (for a module, the
        weights it has); ``None``: random initialization; a path (a
        ``.pt``/``.pth``/``.bin``/``.safetensors`` name, or one holding a
        directory separator): a local state dict; any other string, where
        ``tags`` allows, a weights tag.
    tags : bool, default=False
        Whether the source names weights by tags (torchvision's enum members).
    what, accepted : str, optional
        The error's subject and its list of accepted values, where a source
        words them its own way.

    Returns
    -------
    Weights

    Raises
    ------
    ValueError
        For anything else, naming what is accepted.

    Examples
    --------
    >>> resolve_weights("DEFAULT")
    Weights(kind='default', weights_id=None)
    >>> resolve_weights(None).weights_id
    'random'
    >>> resolve_weights("IMAGENET1K_V2", tags=True).kind
    'tag'
    >>> resolve_weights("IMAGENET1K_V2")
    Traceback (most recent call last):
    ...
    ValueError: weights must be 'DEFAULT', None or a path; got 'IMAGENET1K_V2'
    """
    if weights is None:
        return Weights(RANDOM, "random")
    if is_weights_path(weights):
        return Weights(FILE, f"file:{os.path.abspath(weights)}")
    if isinstance(weights, str) and weights == "DEFAULT":
        return Weights(DEFAULT, None)
    if tags and isinstance(weights, str):
        return Weights(TAG, None)
    if accepted is None:
        accepted = "'DEFAULT', a tag, None or a path" if tags else "'DEFAULT', None or a path"
    raise ValueError(f"{what} must be {accepted}; got {weights!r}")


def load_state_dict_file(path):
    """Load a state dict from a ``.pt``/``.pth``/``.bin``/``.safetensors`` file.

    Files are read with ``torch.load(weights_only=True)`` or safetensors, so a
    weight file can never run code. A checkpoint that wraps the state dict
    under ``"state_dict"`` or ``"model"`` is unwrapped.

    Examples
    --------
    >>> import os, tempfile, torch
    >>> path = os.path.join(tempfile.mkdtemp(), "w.pt")
    >>> torch.save(torch.nn.Linear(2, 1).state_dict(), path)
    >>> sorted(load_state_dict_file(path))
    ['bias', 'weight']
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    if path.endswith(".safetensors"):
        return _read_safetensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(
            f"could not read {path!r} as a state dict of tensors ({exc}). Save weights "
            "with torch.save(model.state_dict(), path) or as .safetensors."
        ) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path!r} holds a {type(state).__name__}, not a state dict")
    return state


def _read_safetensors(path):
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except Exception as exc:  # noqa: BLE001 - SafetensorError and others, re-raised named
        raise ValueError(
            f"could not read {path!r} as a .safetensors file ({type(exc).__name__}: {exc}); "
            "it may be truncated (an interrupted download or copy) or not a safetensors "
            "file. Save weights with safetensors.torch.save_file(model.state_dict(), path)."
        ) from exc


def load_into(module, state, path, *, drop_prefixes=()):
    """Load ``state`` into ``module`` strictly, naming what does not match.

    Keys starting with any of ``drop_prefixes`` (a classifier the backbone
    does not use) are ignored, so files saved from the full classification
    model and from the headless backbone both load. On an error ``module``
    may be partly loaded: callers pass a fresh copy and drop it.

    Raises
    ------
    ValueError
        Naming the file, its missing and unexpected keys, and the tensors
        whose shapes differ from the module's.

    Examples
    --------
    >>> import torch
    >>> wide = torch.nn.Linear(4, 2).state_dict()
    >>> load_into(torch.nn.Linear(3, 2), wide, "w.pt")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: weights file 'w.pt' does not fit Linear: 1 shape mismatch: weight: (2, 4) ...
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items()
             if not any(k.startswith(p) for p in drop_prefixes)}
    mismatched = _shape_mismatches(module, state)
    # Tensors of another shape are left out, so load_state_dict reports the
    # keys (with torch's own leniency, e.g. for BatchNorm counters of old
    # files) instead of raising its RuntimeError at the first mismatch.
    fitting = {k: v for k, v in state.items() if k not in mismatched}
    try:
        result = module.load_state_dict(fitting, strict=False)
    except RuntimeError as exc:  # a module's own loading hook refused the file
        raise ValueError(f"weights file {os.fspath(path)!r} does not fit "
                         f"{type(module).__name__}: {exc}") from exc
    missing = [k for k in result.missing_keys if k not in mismatched]
    problems = [_listed("missing key", missing), _listed("unexpected key",
                                                         result.unexpected_keys)]
    if mismatched:
        shapes = [f"{k}: {file} in the file, {model} in the model"
                  for k, (file, model) in mismatched.items()]
        problems.append(_plural(len(shapes), "shape mismatch", "es") + ": "
                        + "; ".join(shapes[:5]) + _more(shapes))
    problems = [p for p in problems if p]
    if problems:
        raise ValueError(
            f"weights file {os.fspath(path)!r} does not fit {type(module).__name__}: "
            + ", ".join(problems) + ". Was it saved from another architecture or size?"
        )
    return module


def _shape_mismatches(module, state):
    """``{key: (shape in state, shape in module)}`` for tensors of another shape."""
    from torch.nn.parameter import is_lazy

    expected = module.state_dict(keep_vars=True)
    mismatched = {}
    for key, value in state.items():
        target = expected.get(key)
        if target is None or is_lazy(target) or not isinstance(value, torch.Tensor):
            continue  # lazy parameters take the file's shape when loaded
        if value.shape != target.shape:
            mismatched[key] = (tuple(value.shape), tuple(target.shape))
    return mismatched


def _listed(what, keys):
    """``"2 missing keys ['a', 'b']"``, the first five of them; ``""`` for none."""
    if not keys:
        return ""
    return f"{_plural(len(keys), what, 's')} {list(keys[:5])}{_more(keys)}"


def _plural(n, word, suffix):
    return f"{n} {word}{suffix if n != 1 else ''}"


def _more(items):
    return f" and {len(items) - 5} more" if len(items) > 5 else ""


def weights_unavailable(what, where, exc):
    """The error raised when pretrained weights can be neither found nor fetched."""
    return OSError(
        f"Pretrained weights for {what} are not available offline: looked for "
        f"{where} and could not download them ({type(exc).__name__}: {exc}). "
        "Put the file there (copy it from a machine with network access), or pass a "
        "local state dict with weights='/path/to/weights.pth' (.pt, .pth or "
        ".safetensors), or weights=None for random initialization."
    )


def hub_cache_location(hub_id):
    """Where the Hugging Face hub caches ``hub_id``, as :func:`weights_unavailable` names it.

    timm and Hugging Face sources both download through the hub, so both
    name this place when weights cannot be had.

    Examples
    --------
    >>> hub_cache_location("org/model")  # doctest: +ELLIPSIS
    'org/model in the Hugging Face cache ...'
    """
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        HF_HUB_CACHE = os.path.expanduser("~/.cache/huggingface/hub")
    return f"{hub_id} in the Hugging Face cache {HF_HUB_CACHE}"

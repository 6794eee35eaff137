"""Reading weight files safely and explaining missing pretrained weights."""

import os

import torch

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def is_weights_path(weights):
    """True when ``weights`` names a local file rather than a weights tag."""
    return isinstance(weights, (str, os.PathLike)) and (
        str(weights).endswith(WEIGHT_SUFFIXES) or os.sep in str(weights)
    )


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
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
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


def load_into(module, state, path, *, drop_prefixes=()):
    """Load ``state`` into ``module`` strictly, naming what does not match.

    Keys starting with any of ``drop_prefixes`` (a classifier the backbone
    does not use) are ignored, so files saved from the full classification
    model and from the headless backbone both load.
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items()
             if not any(k.startswith(p) for p in drop_prefixes)}
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"weights file {os.fspath(path)!r} does not fit {type(module).__name__}: "
            f"missing keys {result.missing_keys[:5]}, unexpected keys "
            f"{result.unexpected_keys[:5]}"
        )
    return module


def weights_unavailable(what, where, exc):
    """The error raised when pretrained weights can be neither found nor fetched."""
    return OSError(
        f"Pretrained weights for {what} are not available offline: looked for "
        f"{where} and could not download them ({type(exc).__name__}: {exc}). "
        "Put the file there (copy it from a machine with network access), or pass a "
        "local state dict with weights='/path/to/weights.pth' (.pt, .pth or "
        ".safetensors), or weights=None for random initialization."
    )

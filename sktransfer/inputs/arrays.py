"""Image and tensor arrays as samples: checked without copying, a chunk at a time.

Image arrays are ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)``, uint8
in [0, 255] or float in [0, 1]; a list of PIL images or of file paths is
handed to :mod:`.files`. A tensor backbone (a user's module) takes a numeric
array as it is.
"""

import numpy as np

from .files import checked_paths, is_pathlike, is_pil

_CHUNK = 1024  # samples checked at a time, so validation never copies all of X


def image_input(X, channels):
    """``X`` for an image backbone of ``channels`` channels, and its kind.

    Returns
    -------
    data : ndarray or list
        The array (a view, or ``X`` itself), the PIL images or the paths.
    kind : {"nchw", "nhwc", "pil", "paths"}

    Examples
    --------
    >>> import numpy as np
    >>> data, kind = image_input(np.zeros((2, 8, 8, 3), dtype=np.uint8), 3)
    >>> kind, data.shape
    ('nhwc', (2, 8, 8, 3))
    """
    if isinstance(X, (list, tuple)) or (isinstance(X, np.ndarray) and X.dtype == object):
        items = list(X)
        if all(is_pil(x) for x in items):
            return items, "pil"
        if all(is_pathlike(x) for x in items):
            return checked_paths(items), "paths"
        if all(isinstance(x, np.ndarray) for x in items):
            X = np.stack(items)
        else:
            kinds = sorted({type(x).__name__ for x in items})
            raise ValueError(
                f"an image backbone takes image arrays, PIL images or file paths; got a "
                f"list of {kinds}"
            )
    X = np.asarray(X)
    if X.dtype.kind in "US":
        return image_input(list(X), channels)
    if X.dtype.kind not in "uif" or X.dtype.kind == "b":
        raise ValueError(f"image arrays must be numeric (uint8 or float); got dtype {X.dtype}")
    if 0 in X.shape[1:]:
        raise ValueError(f"image arrays need a height, width and channel count above 0; "
                         f"got a dimension of size 0 in shape {X.shape}")
    if X.ndim == 3:
        kind, X = "nchw", X[:, None]
    elif X.ndim == 4 and X.shape[-1] in (1, 3) and X.shape[1] not in (1, 3):
        kind = "nhwc"
    elif X.ndim == 4 and X.shape[1] in (1, 3):
        kind = "nchw"
    elif X.ndim == 4 and X.shape[-1] in (1, 3):
        kind = "nhwc"
    elif X.ndim == 4:
        raise ValueError(
            f"image arrays must have 1 (grayscale) or 3 (RGB) channels, in (N, H, W, C) or "
            f"(N, C, H, W) order; got shape {X.shape}"
        )
    else:
        raise ValueError(
            f"an image backbone takes arrays of shape (N, H, W), (N, H, W, C) or "
            f"(N, C, H, W); got a {X.ndim}-D array of shape {X.shape}"
        )
    n_channels = X.shape[1] if kind == "nchw" else X.shape[-1]
    if n_channels not in (1, channels):
        raise ValueError(f"the backbone takes {channels}-channel images; got {n_channels} "
                         f"channels in an array of shape {X.shape}")
    _check_image_values(X)
    return X, kind


def _check_image_values(X):
    if X.dtype == np.uint8:
        return
    for start in range(0, X.shape[0], _CHUNK):
        chunk = X[start:start + _CHUNK]
        if X.dtype.kind == "f" and not np.isfinite(chunk).all():
            raise ValueError("image array contains NaN or infinite values")
        lo, hi = chunk.min(), chunk.max()
        if X.dtype.kind == "f" and (lo < 0 or hi > 1):
            raise ValueError(
                f"float image arrays must be scaled to [0, 1]; got values in [{lo}, {hi}]. "
                "Divide by the maximum value, or pass uint8 images in [0, 255]."
            )
        if X.dtype.kind in "iu" and (lo < 0 or hi > 255):
            raise ValueError(
                f"integer image arrays must hold values in [0, 255]; got [{lo}, {hi}]"
            )
    if X.dtype.kind in "iu":
        raise ValueError(
            f"integer image arrays must be uint8; got {X.dtype}. Use X.astype(np.uint8)."
        )


def tensor_input(X):
    """``X`` for a tensor backbone, as it is; strings are refused with a pointer to text."""
    if isinstance(X, (list, tuple)) and X and isinstance(X[0], str):
        raise ValueError("this backbone takes numeric arrays; got strings. Use a text "
                         "backbone ('hf:<model>') for text.")
    return X

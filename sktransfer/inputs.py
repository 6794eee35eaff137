"""From ``X`` to an indexable source of raw samples.

``as_samples(X, modality)`` validates ``X`` for a backbone's modality, infers
what kind of input it is and wraps it, without copying or decoding anything:
arrays are sliced a batch at a time, files are decoded when their batch is
drawn (inside DataLoader workers when ``num_workers > 0``), and the backbone's
preprocessing runs on each batch in :class:`Collate`.

Accepted inputs:

- image backbones: uint8 arrays ``(N, H, W)``, ``(N, H, W, C)`` or
  ``(N, C, H, W)`` (float arrays too, scaled to [0, 1]), lists of file paths,
  lists of PIL images, a pandas Series or one-column DataFrame of paths;
- text backbones: a list, array or pandas Series of strings;
- tensor backbones (a user's module): a numeric array, as it is.
"""

import io
import os

import numpy as np
import torch
from sklearn.utils.validation import validate_data

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm")
_CHUNK = 1024  # samples checked at a time, so validation never copies all of X


class Samples(torch.utils.data.Dataset):
    """Raw samples of one kind, optionally with targets.

    ``__getitems__`` (used by DataLoader to fetch a whole batch at once)
    returns arrays as one tensor per batch, so array inputs are sliced and
    converted with one call per batch instead of one per sample.

    Parameters
    ----------
    data : array or list
        Validated input, as returned by :func:`as_samples`.
    kind : {"nchw", "nhwc", "paths", "encoded", "pil", "text", "tensor"}
        ``"encoded"``: the bytes of image files, decoded a batch at a time like
        ``"paths"`` (the feature cache embeds exactly the bytes it hashed).
    y : array, optional
        Targets; when given, items are ``(sample, target)`` pairs.
    """

    def __init__(self, data, kind, y=None):
        self.data = data
        self.kind = kind
        self.y = y

    def __len__(self):
        return len(self.data)

    def subset(self, indices):
        """The same kind of samples restricted to ``indices`` (no decoding)."""
        indices = np.asarray(indices)
        if isinstance(self.data, np.ndarray):
            data = self.data[indices]
        else:
            data = [self.data[i] for i in indices]
        y = None if self.y is None else self.y[indices]
        return Samples(data, self.kind, y)

    def __getitem__(self, i):
        return self.__getitems__([i])

    def __getitems__(self, indices):
        if self.kind in ("nchw", "nhwc"):
            batch = torch.from_numpy(np.ascontiguousarray(self.data[np.asarray(indices)]))
            if self.kind == "nhwc":
                batch = batch.permute(0, 3, 1, 2)
            if batch.dtype != torch.uint8:
                batch = batch.float()
        elif self.kind == "tensor":
            batch = self.data[np.asarray(indices)]
        elif self.kind == "text":
            batch = [self.data[i] for i in indices]
        else:
            batch = [_decode_image(self.data[i]) for i in indices]
        if self.y is None:
            return batch
        return batch, self.y[np.asarray(indices)]


class Collate:
    """DataLoader ``collate_fn``: apply the backbone's preprocessing to a batch.

    ``preprocess=None`` passes the raw batch through, for callers that
    preprocess after copying the batch to an accelerator.
    """

    def __init__(self, preprocess):
        self.preprocess = preprocess

    def __call__(self, batch):
        if isinstance(batch, tuple):
            raw, y = batch
            return self._apply(raw), torch.as_tensor(y)
        return self._apply(batch)

    def _apply(self, raw):
        return raw if self.preprocess is None else self.preprocess(raw)


def as_samples(X, modality, *, channels=3, y=None):
    """Validate ``X`` for a backbone of ``modality`` and wrap it as :class:`Samples`.

    Raises
    ------
    ValueError
        For an empty ``X``, a wrong rank or channel count, NaN or infinite
        values, text given to an image backbone or the reverse.
    FileNotFoundError
        For paths that do not exist (the first few are named).

    Examples
    --------
    >>> import numpy as np
    >>> samples = as_samples(np.zeros((4, 8, 8), dtype=np.uint8), "image")
    >>> samples.kind, len(samples), tuple(samples.__getitems__([0, 1]).shape)
    ('nchw', 4, (2, 1, 8, 8))
    """
    X = _unwrap_pandas(X)
    if len(X) == 0 if not isinstance(X, np.ndarray) else X.shape[0] == 0:
        raise ValueError("X is empty: 0 samples were given, at least 1 is needed.")
    if modality == "image":
        data, kind = _image_input(X, channels)
    elif modality == "text":
        data, kind = _text_input(X), "text"
    elif modality == "tensor":
        data, kind = _tensor_input(X), "tensor"
    else:
        raise ValueError(f"unknown modality {modality!r}")
    return Samples(data, kind, y)


def estimator_samples(estimator, X, backbone, *, reset, y=None):
    """:func:`as_samples` for an estimator's ``fit``, ``transform`` or ``predict``.

    Input to a tensor backbone goes through scikit-learn's ``validate_data``
    first (dtype, NaN, ``n_features_in_`` set when ``reset`` and checked
    otherwise); ``y``, when given, must have one target per sample.
    """
    if backbone.modality == "tensor":
        X = validate_data(estimator, X, reset=reset, allow_nd=True,
                          dtype=[np.float32, np.float64])
    samples = as_samples(X, backbone.modality, channels=backbone.input_channels or 3, y=y)
    if y is not None and len(samples) != len(y):
        raise ValueError(f"X and y have different lengths: X has {len(samples)} samples, "
                         f"y has {len(y)}.")
    return samples


def _unwrap_pandas(X):
    module = type(X).__module__
    if module.startswith("pandas"):
        if hasattr(X, "columns"):  # a DataFrame: one column of samples
            if X.shape[1] != 1:
                return X.to_numpy()
            X = X.iloc[:, 0]
        values = X.to_numpy()
        return list(values) if values.dtype == object else values
    return X


def _is_pil(x):
    from PIL import Image

    return isinstance(x, Image.Image)


def _is_pathlike(x):
    return isinstance(x, (str, os.PathLike))


def _image_input(X, channels):
    if isinstance(X, (list, tuple)) or (isinstance(X, np.ndarray) and X.dtype == object):
        items = list(X)
        if all(_is_pil(x) for x in items):
            return items, "pil"
        if all(_is_pathlike(x) for x in items):
            return _checked_paths(items), "paths"
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
        return _image_input(list(X), channels)
    if X.dtype.kind not in "uif" or X.dtype.kind == "b":
        raise ValueError(f"image arrays must be numeric (uint8 or float); got dtype {X.dtype}")
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


def _looks_like_path(s):
    s = os.fspath(s)
    return s.lower().endswith(IMAGE_SUFFIXES) or os.sep in s


def _checked_paths(items):
    paths = [os.fspath(p) for p in items]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        if not any(_looks_like_path(p) for p in missing):
            raise ValueError(
                f"an image backbone got text (e.g. {missing[0][:60]!r}), not images; give "
                "image arrays, PIL images or paths to image files, or use a text backbone "
                "such as 'hf:<model>'."
            )
        shown = ", ".join(repr(p) for p in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise FileNotFoundError(f"image files do not exist: {shown}{more}")
    return paths


def _decode_image(item):
    from PIL import Image, UnidentifiedImageError

    if _is_pil(item):
        img = item
    else:
        source = io.BytesIO(item) if isinstance(item, (bytes, bytearray, memoryview)) else item
        if source is not item:
            item = f"<{len(source.getbuffer())} bytes of an image file>"
        try:
            img = Image.open(source)
            img.load()
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"{item!r} is not an image file that PIL can read ({exc})") from exc
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    array = np.asarray(img)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _text_input(X):
    if isinstance(X, np.ndarray) and X.dtype.kind not in "UO":
        raise ValueError(
            f"a text backbone takes a list of strings; got a numeric array of shape {X.shape}"
        )
    items = list(X)
    bad = next((x for x in items if not isinstance(x, str)), None)
    if bad is not None:
        raise ValueError(
            f"a text backbone takes a list of strings; got an item of type "
            f"{type(bad).__name__}: {bad!r:.60}"
        )
    return items


def _tensor_input(X):
    if isinstance(X, (list, tuple)) and X and isinstance(X[0], str):
        raise ValueError("this backbone takes numeric arrays; got strings. Use a text "
                         "backbone ('hf:<model>') for text.")
    return X

"""From ``X`` to an indexable source of raw samples.

``as_samples(X, modality)`` validates ``X`` for a backbone's modality, infers
what kind of input it is and wraps it, without copying or decoding anything:
arrays are sliced a batch at a time, files are decoded when their batch is
drawn (inside DataLoader workers when ``num_workers > 0``), and the backbone's
preprocessing runs on each batch in :class:`Collate`.

Accepted inputs:

- image backbones: uint8 arrays ``(N, H, W)``, ``(N, H, W, C)`` or
  ``(N, C, H, W)`` (float arrays too, scaled to [0, 1]), lists of file paths,
  lists of PIL images, a pandas or polars Series or one-column DataFrame of
  paths;
- text backbones: a list, array, or pandas or polars Series (or one-column
  DataFrame) of strings;
- audio backbones: file paths or arrays of samples with their
  ``sampling_rate`` (see :mod:`sktransfer.audio_inputs`);
- tensor backbones (a user's module): a numeric array, as it is.

A single sample (a string, bytes, a path, a PIL image, a number) is refused,
as scikit-learn refuses a scalar ``X``: iterating a string would otherwise
make one sample per character.
"""

import io
import numbers
import os

import numpy as np
import torch
from sklearn.utils.validation import validate_data

from .audio_inputs import audio_samples

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm")
_CHUNK = 1024  # samples checked at a time, so validation never copies all of X
#: Version of how image files decode to pixels. Bump it whenever a file starts
#: decoding to other values (2: 16-bit images scaled, float ones kept), so that
#: caches keyed on file bytes do not serve features of the old pixels.
DECODING = 2
# PIL modes of 16-bit unsigned samples (any byte order): scaled by 1 / 65535.
_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# PIL modes whose visible pixels are gray levels: decoded to one channel, like "L".
_GRAY_MODES = ("1", "LA")


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


def as_samples(X, modality, *, channels=3, y=None, audio=None):
    """Validate ``X`` for a backbone of ``modality`` and wrap it as :class:`Samples`.

    ``audio``: for modality ``"audio"``, the keyword arguments of
    :func:`~sktransfer.audio_inputs.audio_samples` (``rate``,
    ``target_rate``, ``max_duration``); the result is then an
    :class:`~sktransfer.audio_inputs.AudioSamples`.

    Raises
    ------
    ValueError
        For a single sample instead of a list (a string, bytes, a path),
        an empty ``X``, a wrong rank or channel count, a dimension of size 0,
        NaN or infinite values, text given to an image backbone or the
        reverse, a text item that is not a string or not valid Unicode.
    FileNotFoundError
        For paths that do not exist (the first few are named).

    Examples
    --------
    >>> import numpy as np
    >>> samples = as_samples(np.zeros((4, 8, 8), dtype=np.uint8), "image")
    >>> samples.kind, len(samples), tuple(samples.__getitems__([0, 1]).shape)
    ('nchw', 4, (2, 1, 8, 8))
    """
    _reject_single_sample(X)
    X = _unwrap_frame(X)
    if len(X) == 0 if not isinstance(X, np.ndarray) else X.shape[0] == 0:
        raise ValueError("X is empty: 0 samples were given, at least 1 is needed.")
    if modality == "image":
        data, kind = _image_input(X, channels)
    elif modality == "text":
        data, kind = _text_input(X), "text"
    elif modality == "tensor":
        data, kind = _tensor_input(X), "tensor"
    elif modality == "audio":
        if audio is None:
            raise ValueError("audio samples need the model's sampling rate (audio=...)")
        return audio_samples(X, y=y, **audio)
    else:
        raise ValueError(f"unknown modality {modality!r}")
    return Samples(data, kind, y)


def estimator_samples(estimator, X, backbone, *, reset, y=None):
    """:func:`as_samples` for an estimator's ``fit``, ``transform`` or ``predict``.

    Input to a tensor backbone goes through scikit-learn's ``validate_data``
    first (dtype, NaN, ``n_features_in_`` set when ``reset`` and checked
    otherwise); ``y``, when given, must have one target per sample.
    """
    _reject_single_sample(X)  # before validate_data, which would parse a string as a number
    if backbone.modality == "tensor":
        X = validate_data(estimator, X, reset=reset, allow_nd=True,
                          dtype=[np.float32, np.float64])
    samples = as_samples(X, backbone.modality, channels=backbone.input_channels or 3, y=y,
                         audio=_audio_rule(estimator, backbone))
    if y is not None and len(samples) != len(y):
        raise ValueError(f"X and y have different lengths: X has {len(samples)} samples, "
                         f"y has {len(y)}.")
    return samples


def _audio_rule(estimator, backbone):
    """How an estimator's clips are read for an audio backbone: the arrays' stated
    ``sampling_rate``, the model's rate and the seconds kept of each clip."""
    if backbone.modality != "audio":
        return None
    prep = backbone.preprocess
    rate = getattr(estimator, "sampling_rate", None)
    max_duration = getattr(estimator, "max_duration", "auto")
    window = prep.window() if hasattr(prep, "window") else None
    if max_duration == "auto":
        max_duration = prep.default_max_duration()
    elif max_duration is not None and window is not None and max_duration > window + 1e-9:
        raise ValueError(f"max_duration={max_duration} is longer than the {window:g} s "
                         f"that {backbone.spec} takes at once; use at most {window:g} (or "
                         "'auto').")
    return {"rate": rate, "target_rate": prep.sampling_rate, "max_duration": max_duration}


def _reject_single_sample(X):
    """Refuse one sample given where a list of samples is expected.

    A string is iterable, so without this check ``transform("a cat")`` would
    embed one sample per character; scikit-learn refuses a scalar ``X`` the
    same way.
    """
    if isinstance(X, str):
        what = "string"
    elif isinstance(X, (bytes, bytearray, memoryview)):
        what = "bytes object"
    elif isinstance(X, os.PathLike):
        what = "path"
    elif _is_pil(X):
        what = "PIL image"
    elif isinstance(X, (numbers.Number, np.generic)) or (isinstance(X, np.ndarray)
                                                          and X.ndim == 0):
        what = type(X).__name__
    else:
        return
    raise ValueError(
        f"Expected a list of samples, got a single {what} {X!r:.60}. To pass one sample, "
        "wrap it in a list: [X]."
    )


def _unwrap_frame(X):
    """A pandas or polars Series, or a DataFrame's single column, as a list or array.

    ``ColumnTransformer`` with a list selector passes a one-column DataFrame;
    its column is the samples. A DataFrame of several columns becomes a 2-D
    array (features for a tensor backbone, an error for the others).
    """
    library = type(X).__module__.partition(".")[0]
    if library not in ("pandas", "polars"):
        return X
    if hasattr(X, "columns"):
        if X.shape[1] != 1:
            return X.to_numpy()
        X = X.iloc[:, 0] if library == "pandas" else X.to_series(0)
    values = X.to_numpy()
    return list(values) if values.dtype == object else values


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
    """One image file (path or bytes) or PIL image as a (C, H, W) tensor.

    The tensor is uint8 for 8-bit images and float32 in [0, 1] for 16-bit and
    float ones, the two forms the backbones' preprocessing scales alike.
    """
    img, name = _open_image(item)
    array = _pixels(img, name)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1)


def _open_image(item):
    """``item`` opened with PIL, and how to name it in an error."""
    from PIL import Image, UnidentifiedImageError

    if _is_pil(item):
        return item, f"a PIL image of size {item.size}"
    if isinstance(item, (bytes, bytearray, memoryview)):
        source = io.BytesIO(item)
        name = f"<{len(source.getbuffer())} bytes of an image file>"
    else:
        source, name = item, repr(os.fspath(item))
    try:
        img = Image.open(source)
        img.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{name} is not an image file that PIL can read ({exc})") from exc
    return img, name


def _pixels(img, name):
    """The pixels of ``img`` as a writable (H, W) or (H, W, C) uint8 or float32 array.

    8-bit images keep their values; every other mode is brought to what a
    user sees in the image: alpha dropped, palettes expanded, CMYK and other
    color spaces converted to RGB, 16-bit samples divided by 65535 (as
    torchvision and scikit-image scale them), so a 16-bit export of an image
    gives the network the input of its 8-bit export. What cannot be scaled
    without guessing is refused.
    """
    mode = img.mode
    if mode in ("L", "RGB"):
        return np.array(img)
    if mode in _GRAY_MODES:
        return np.array(img.convert("L"))
    if mode in _UINT16_MODES:
        pixels = np.asarray(img).astype(np.float32)
        pixels /= 65535
        return pixels
    if mode == "F":
        return _unit_floats(np.array(img, dtype=np.float32), name)
    if mode == "I":
        # 32-bit integers (counts, labels, scientific data) have no white
        # level: dividing by 2**31 - 1 would make a typical image all but
        # black, a silent wrong input.
        raise ValueError(
            f"{name} has image mode 'I' (32-bit integer samples), which has no standard "
            "range to scale to [0, 1]. Save it as 8-bit or 16-bit, or as float (mode 'F') "
            "scaled to [0, 1], or pass it as a uint8 or float array."
        )
    try:
        return np.array(img.convert("RGB"))
    except ValueError as exc:
        raise ValueError(f"{name} has image mode {mode!r}, which cannot be converted to "
                         f"RGB ({exc})") from exc


def _unit_floats(pixels, name):
    """Float pixels, refused unless finite and within [0, 1] like float arrays."""
    if not np.isfinite(pixels).all():
        raise ValueError(f"{name} has image mode 'F' (float samples) and holds NaN or "
                         "infinite values")
    lo, hi = float(pixels.min()), float(pixels.max())
    if lo < 0 or hi > 1:
        raise ValueError(
            f"{name} has image mode 'F' (float samples) with values in [{lo}, {hi}]; float "
            "images must be scaled to [0, 1]. Rescale the file, or pass the images as a "
            "float array scaled to [0, 1]."
        )
    return pixels


def _text_input(X):
    if isinstance(X, np.ndarray) and X.dtype.kind not in "UO":
        raise ValueError(
            f"a text backbone takes a list of strings; got a numeric array of shape {X.shape}"
        )
    items = list(X)
    for i, item in enumerate(items):
        _check_text(i, item)
    return items


def _check_text(i, item):
    """Refuse item ``i`` of X unless it is a string a tokenizer can encode."""
    if not isinstance(item, str):
        missing = item is None or (isinstance(item, float) and item != item)
        raise ValueError(
            f"a text backbone takes a list of strings; item {i} has type "
            f"{type(item).__name__}: {item!r:.60}" + (" (a missing value?)" if missing else "")
        )
    if item.isascii():  # constant time; only other strings are encoded to check them
        return
    try:
        item.encode("utf-8")
    except UnicodeEncodeError as exc:
        # lone surrogates, e.g. from bytes decoded with errors="surrogateescape"
        raise ValueError(
            f"item {i} is not valid Unicode text ({exc.reason}: {exc.object[exc.start]!r} at "
            f"position {exc.start} of {item!r:.60}); decode the bytes with "
            "errors='replace', or remove the character."
        ) from None


def _tensor_input(X):
    if isinstance(X, (list, tuple)) and X and isinstance(X[0], str):
        raise ValueError("this backbone takes numeric arrays; got strings. Use a text "
                         "backbone ('hf:<model>') for text.")
    return X

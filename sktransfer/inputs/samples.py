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
  ``sampling_rate`` (see :mod:`sktransfer.inputs.audio`);
- tensor backbones (a user's module): a numeric array, as it is.

A single sample (a string, bytes, a path, a PIL image, a number) is refused,
as scikit-learn refuses a scalar ``X``: iterating a string would otherwise
make one sample per character.
"""

import numbers
import os

import numpy as np
import torch
from sklearn.utils.validation import validate_data

from .arrays import image_input, tensor_input
from .audio import audio_rule, audio_samples
from .files import decode_image, is_pil
from .text import text_input


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
            batch = [decode_image(self.data[i]) for i in indices]
        if self.y is None:
            return batch
        return batch, self.y[np.asarray(indices)]


class WeightedTargets:
    """Targets with a weight per sample, indexed together like one array.

    Stands where a :class:`Samples`' ``y`` array stands when the user gave
    ``sample_weight``: slicing and fancy indexing slice both, so held-out
    rows, shards and batches carry their weights. :class:`Collate` turns a
    batch of them into ``{"target": tensor, "weight": tensor}``, which the
    training loss (:class:`~sktransfer.training.weights.WeightedLoss`) reads.

    Parameters
    ----------
    target : ndarray of shape (n_samples,) or (n_samples, n_outputs)
    weight : ndarray of shape (n_samples,), float32

    Examples
    --------
    >>> import numpy as np
    >>> y = WeightedTargets(np.array([0, 1, 1]), np.array([1.0, 0.5, 2.0], dtype=np.float32))
    >>> part = y[np.array([2, 0])]
    >>> part.target.tolist(), part.weight.tolist(), len(part)
    ([1, 0], [2.0, 1.0], 2)
    """

    def __init__(self, target, weight):
        if len(target) != len(weight):
            raise ValueError(f"{len(target)} targets but {len(weight)} weights")
        self.target = target
        self.weight = weight

    def __len__(self):
        return len(self.target)

    def __getitem__(self, indices):
        return WeightedTargets(self.target[indices], self.weight[indices])

    def as_tensors(self):
        """The batch as the loss takes it: ``{"target": tensor, "weight": tensor}``."""
        return {"target": torch.as_tensor(self.target), "weight": torch.as_tensor(self.weight)}


def plain_targets(y):
    """The target values of ``y``, without their weights (an array stays itself)."""
    return y.target if isinstance(y, WeightedTargets) else y


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
            y = y.as_tensors() if isinstance(y, WeightedTargets) else torch.as_tensor(y)
            return self._apply(raw), y
        return self._apply(batch)

    def _apply(self, raw):
        return raw if self.preprocess is None else self.preprocess(raw)


def as_samples(X, modality, *, channels=3, y=None, audio=None):
    """Validate ``X`` for a backbone of ``modality`` and wrap it as :class:`Samples`.

    ``audio``: for modality ``"audio"``, the keyword arguments of
    :func:`~sktransfer.inputs.audio.audio_samples` (``rate``,
    ``target_rate``, ``max_duration``); the result is then an
    :class:`~sktransfer.inputs.audio.AudioSamples`.

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
        data, kind = image_input(X, channels)
    elif modality == "text":
        data, kind = text_input(X), "text"
    elif modality == "tensor":
        data, kind = tensor_input(X), "tensor"
    elif modality == "audio":
        if audio is None:
            raise ValueError("audio samples need the model's sampling rate (audio=...)")
        return audio_samples(X, y=y, **audio)
    else:
        raise ValueError(f"unknown modality {modality!r}")
    return Samples(data, kind, y)


def estimator_samples(estimator, X, backbone, *, reset, y=None, sampling_rate=None,
                      max_duration="auto"):
    """:func:`as_samples` for an estimator's ``fit``, ``transform`` or ``predict``.

    Input to a tensor backbone goes through scikit-learn's ``validate_data``
    first (dtype, NaN, ``n_features_in_`` set when ``reset`` and checked
    otherwise), the one use of ``estimator``; ``y``, when given, must have
    one target per sample.

    Parameters
    ----------
    estimator : BaseEstimator
        Handed to ``validate_data`` only: nothing else of it is read here.
    X : array-like or list
    backbone : Backbone
        Its modality, channels and (audio) preprocessing decide the checks.
    reset : bool
    y : array, optional
    sampling_rate : int or None, default=None
        For an audio backbone: the rate of array clips (the estimator's
        ``sampling_rate`` parameter).
    max_duration : "auto", float or None, default="auto"
        For an audio backbone: the seconds kept of each clip (the
        estimator's ``max_duration`` parameter).
    """
    _reject_single_sample(X)  # before validate_data, which would parse a string as a number
    if backbone.modality == "tensor":
        X = validate_data(estimator, X, reset=reset, allow_nd=True,
                          dtype=[np.float32, np.float64])
    audio = (audio_rule(backbone.preprocess, backbone.spec, rate=sampling_rate,
                        max_duration=max_duration)
             if backbone.modality == "audio" else None)
    samples = as_samples(X, backbone.modality, channels=backbone.input_channels or 3, y=y,
                         audio=audio)
    if y is not None and len(samples) != len(y):
        raise ValueError(f"X and y have different lengths: X has {len(samples)} samples, "
                         f"y has {len(y)}.")
    return samples


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
    elif is_pil(X):
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

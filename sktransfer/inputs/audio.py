"""Sound as samples: clips from files or arrays, decoded and resampled a batch at a time.

An audio backbone takes

- a list (or pandas/polars column) of file paths: WAV, FLAC, OGG/Vorbis,
  MP3 and the other formats libsndfile reads (through ``soundfile``); each
  file carries its own sampling rate;
- a list of 1-D float arrays of any lengths, or a 2-D array ``(N, samples)``
  of equal-length clips, at the rate ``sampling_rate`` states (required:
  a rate is never guessed). A multichannel clip in the list may be
  ``(samples, channels)`` (soundfile's layout) or ``(channels, samples)``
  (torchaudio's): a first axis of at most :data:`MAX_CHANNELS` that is
  shorter than the second holds the channels.

Every clip is mixed down to mono (the mean of its channels), integer PCM is
scaled to [-1, 1] (int16 by 1/32768, as libsndfile does), and the clip is
resampled to the model's rate with soxr's high-quality polyphase resampler
(faster and more accurate in band than ``scipy.signal.resample_poly``; the
comparison is on the Audio page of the user guide). Clips longer than the maximum duration are truncated to
their first ``max_duration`` seconds (the documented policy for long clips),
at decoding, so a long file never reaches the model whole.

Nothing is decoded up front: a file's header is read to check it (and to
sort clips by length), its samples when its batch is drawn.
"""

import io
import os

import numpy as np
import torch

#: Version of how a clip becomes the samples the model sees (mixing down,
#: integer scaling, resampler and its quality). Part of every cached audio
#: sample's digest, so that a change of rule never serves old features.
RESAMPLING = "soxr-HQ-mean-mono-1"

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".au", ".w64",
                  ".caf", ".opus")

#: The most channels a clip's first axis is read as (7.1 sound has 8); a
#: longer first axis, or one not shorter than the second, holds the samples.
MAX_CHANNELS = 8

_INT_SCALE = {"i": lambda dtype: float(2 ** (8 * dtype.itemsize - 1)),
              "u": lambda dtype: float(2 ** (8 * dtype.itemsize - 1))}


def _soundfile():
    try:
        import soundfile
    except ImportError as exc:
        raise ImportError("audio files need the 'soundfile' package: "
                          "pip install \"sktransfer[audio]\"") from exc
    return soundfile


def resample(clip, rate, target_rate):
    """``clip`` (1-D float32) resampled from ``rate`` to ``target_rate`` Hz.

    soxr's "HQ" polyphase resampler: a linear-phase low-pass at the lower
    Nyquist frequency, so nothing above it aliases into the result.

    Examples
    --------
    >>> import numpy as np
    >>> resample(np.zeros(8000, np.float32), 8000, 16000).shape
    (16000,)
    """
    if int(rate) == int(target_rate):
        return clip
    try:
        import soxr
    except ImportError as exc:
        raise ImportError("resampling audio needs the 'soxr' package: "
                          "pip install \"sktransfer[audio]\"") from exc
    return soxr.resample(clip, int(rate), int(target_rate), quality="HQ").astype(np.float32,
                                                                                   copy=False)


def samples_first(clip):
    """``clip`` with its samples first: torchaudio's ``(channels, samples)`` transposed.

    A 2-D clip whose first axis is at most :data:`MAX_CHANNELS` long and
    shorter than its second holds its channels first (a clip of a few
    samples over more channels is not a sound a model can embed); it is
    returned as a ``(samples, channels)`` view, without a copy, so that
    lengths, truncation and mixing down all work on the samples axis.

    Examples
    --------
    >>> import numpy as np
    >>> samples_first(np.zeros((2, 16000))).shape
    (16000, 2)
    >>> samples_first(np.zeros((16000, 2))).shape
    (16000, 2)
    """
    clip = np.asarray(clip)
    if clip.ndim == 2 and clip.shape[0] <= MAX_CHANNELS and clip.shape[0] < clip.shape[1]:
        return clip.T
    return clip


def mono_float(array, name):
    """``array`` (samples,) or (samples, channels) as mono float32 in [-1, 1].

    The layout is taken as given (see :func:`samples_first` for arrays a
    user passes, whose channels may come first).

    Integer PCM is divided by its full scale; float samples are kept as they
    are (a float clip is already in the model's units).
    """
    array = np.asarray(array)
    if array.dtype.kind in "iu":
        scale = _INT_SCALE[array.dtype.kind](array.dtype)
        offset = scale if array.dtype.kind == "u" else 0.0  # unsigned PCM is centered on 2**(b-1)
        array = (array.astype(np.float32) - offset) / scale
    elif array.dtype.kind != "f":
        raise ValueError(f"{name} must hold numbers; got dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)
    if array.ndim == 2:
        # Stereo and more: mixed down, over contiguous rows so that a
        # channels-first clip (a transposed view) sums as its copy would.
        array = np.ascontiguousarray(array).mean(axis=1, dtype=np.float32)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D clip (or samples x channels); got shape "
                         f"{array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: a clip needs at least one sample")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


class AudioSamples(torch.utils.data.Dataset):
    """Clips of one kind, decoded and resampled to ``target_rate`` when a batch is drawn.

    The audio counterpart of :class:`sktransfer.inputs.Samples` (the same
    interface: ``data``, ``kind``, ``y``, ``subset``, ``__getitems__``), kept
    apart so that :mod:`sktransfer.inputs.samples` imports this module, not
    the reverse.

    Parameters
    ----------
    data : list or ndarray
        Paths (kind ``"audio_paths"``), the bytes of audio files
        (``"audio_encoded"``, what the feature cache embeds), or arrays
        (``"audio_arrays"``: a list of 1-D or (samples, channels) arrays,
        as :func:`samples_first` gives them, or a 2-D array of equal-length
        mono clips).
    kind : {"audio_paths", "audio_encoded", "audio_arrays"}
    y : array, optional
    rate : int or None
        The sampling rate of arrays (files carry theirs).
    target_rate : int
        The model's sampling rate.
    max_samples : int or None
        Clips are truncated to this many samples at ``target_rate``.
    """

    def __init__(self, data, kind, y=None, *, rate=None, target_rate, max_samples=None):
        self.data = data
        self.kind = kind
        self.y = y
        self.rate = None if rate is None else int(rate)
        self.target_rate = int(target_rate)
        self.max_samples = None if max_samples is None else int(max_samples)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.__getitems__([i])

    def _like(self, data, kind, y):
        return AudioSamples(data, kind, y, rate=self.rate, target_rate=self.target_rate,
                            max_samples=self.max_samples)

    def subset(self, indices):
        indices = np.asarray(indices)
        data = (self.data[indices] if isinstance(self.data, np.ndarray)
                else [self.data[i] for i in indices])
        return self._like(data, self.kind, None if self.y is None else self.y[indices])

    def encoded(self, payloads):
        """The same rule over the bytes of files (what the feature cache digested)."""
        return self._like(list(payloads), "audio_encoded", None)

    def rule(self):
        """Bytes naming how a clip becomes model samples (enters cache digests)."""
        rate = self.rate if self.kind == "audio_arrays" else "file"
        return f"audio\0{RESAMPLING}\0{rate}\0{self.target_rate}\0{self.max_samples}\0".encode()

    def clip(self, i):
        """Clip ``i`` as mono float32 at ``target_rate``, truncated to ``max_samples``."""
        item = self.data[i]
        if self.kind == "audio_arrays":
            array, rate, name = item, self.rate, f"clip {i}"
            if self.max_samples is not None:
                # Cut before resampling (plus a margin for the filter), not after.
                array = np.asarray(array)[:_source_samples(self.max_samples, rate,
                                                           self.target_rate)]
        else:
            array, rate, name = _read(item, self.max_samples, self.target_rate)
        clip = resample(mono_float(array, name), rate, self.target_rate)
        return clip if self.max_samples is None else clip[:self.max_samples]

    def lengths(self):
        """Clip lengths at ``target_rate``, from array shapes or file headers (no decoding)."""
        if self.kind == "audio_arrays":
            sizes = [len(x) for x in self.data]
            rates = [self.rate] * len(sizes)
        elif self.kind == "audio_paths":
            infos = [_soundfile().info(p) for p in self.data]
            sizes, rates = [f.frames for f in infos], [f.samplerate for f in infos]
        else:
            infos = [_soundfile().info(io.BytesIO(b)) for b in self.data]
            sizes, rates = [f.frames for f in infos], [f.samplerate for f in infos]
        out = np.array([int(np.ceil(n * self.target_rate / r)) for n, r in zip(sizes, rates)])
        return out if self.max_samples is None else np.minimum(out, self.max_samples)

    def __getitems__(self, indices):
        batch = [self.clip(i) for i in indices]
        if self.y is None:
            return batch
        return batch, self.y[np.asarray(indices)]


def _source_samples(max_samples, rate, target_rate):
    # The source samples that make max_samples at the target rate, and some
    # more, so the resampler's filter sees the same context as for a longer clip.
    return int(np.ceil(max_samples * rate / target_rate)) + int(rate) // 10


def _read(item, max_samples, target_rate):
    """A file's samples (frames, channels), its rate, and its name for errors."""
    sf = _soundfile()
    if isinstance(item, (bytes, bytearray, memoryview)):
        source, name = io.BytesIO(item), f"<{len(item)} bytes of an audio file>"
    else:
        source, name = item, repr(os.fspath(item))
    try:
        with sf.SoundFile(source) as fh:
            rate = fh.samplerate
            frames = -1 if max_samples is None else _source_samples(max_samples, rate,
                                                                    target_rate)
            # Integer files are read as float32 by libsndfile: scaled by 1/32768 for int16.
            array = fh.read(frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise ValueError(f"{name} is not an audio file that soundfile can read ({exc})") from exc
    return array, rate, name


def audio_samples(X, *, rate, target_rate, max_duration, y=None):
    """Validate ``X`` (paths or arrays) as clips for a model at ``target_rate`` Hz.

    Parameters
    ----------
    X : list, ndarray
        Paths, a list of clips (1-D arrays, or 2-D multichannel arrays in
        either layout, see :func:`samples_first`), or a 2-D array
        (N, samples) of mono clips.
    rate : int or None
        The sampling rate of arrays; required for arrays, ignored for files
        (which carry their own).
    target_rate : int
        The model's sampling rate.
    max_duration : float or None
        Seconds kept of each clip; None keeps everything.
    y : array, optional

    Returns
    -------
    AudioSamples

    Raises
    ------
    ValueError
        Arrays without a rate, an empty clip, a clip of the wrong rank, a
        file that cannot be decoded (named), text that is not a path.
    FileNotFoundError
        For paths that do not exist.

    Examples
    --------
    >>> import numpy as np
    >>> s = audio_samples(np.zeros((2, 800)), rate=8000, target_rate=16000, max_duration=None)
    >>> s.kind, len(s), s.__getitems__([0])[0].shape
    ('audio_arrays', 2, (1600,))
    """
    max_samples = None if max_duration is None else max(1, int(max_duration * target_rate))
    if isinstance(X, np.ndarray) and X.dtype.kind in "US":
        X = list(X)
    if isinstance(X, (list, tuple)) or (isinstance(X, np.ndarray) and X.dtype == object):
        items = list(X)
        if all(isinstance(x, (str, os.PathLike)) for x in items):
            return AudioSamples(_checked_files(items), "audio_paths", y,
                                target_rate=target_rate, max_samples=max_samples)
        if not all(isinstance(x, (np.ndarray, list, tuple, torch.Tensor)) for x in items):
            kinds = sorted({type(x).__name__ for x in items})
            raise ValueError(f"an audio backbone takes file paths or arrays of samples; got "
                             f"a list of {kinds}")
        # Channels-first clips (torchaudio's layout) as views with their samples first.
        clips = [samples_first(x) for x in items]
    elif isinstance(X, (np.ndarray, torch.Tensor)):
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"an audio backbone takes a 2-D array (clips, samples) of "
                             f"equal-length clips, or a list of 1-D arrays; got shape {X.shape}")
        clips = X
    else:
        raise ValueError(f"an audio backbone takes file paths or arrays of samples; got "
                         f"{type(X).__name__}")
    if rate is None:
        raise ValueError("audio arrays carry no sampling rate: state it with sampling_rate="
                         f"(the model takes {target_rate} Hz; clips at other rates are "
                         "resampled). Files carry their own rate.")
    for i, clip in enumerate(clips):
        mono_float(clip, f"clip {i}")  # rank, dtype, emptiness, NaN: refused now
    return AudioSamples(clips, "audio_arrays", y, rate=rate, target_rate=target_rate,
                        max_samples=max_samples)


def audio_rule(preprocess, spec, *, rate, max_duration):
    """How clips are read for an audio backbone: :func:`audio_samples`'s keywords.

    Parameters
    ----------
    preprocess : object
        The backbone's preprocessing: its ``sampling_rate`` (the model's),
        ``default_max_duration()`` and, for models that take a fixed window,
        ``window()`` in seconds.
    spec : str
        The backbone's name, for the error message.
    rate : int or None
        The stated rate of array clips (the estimator's ``sampling_rate``).
    max_duration : "auto", float or None
        The seconds kept of each clip; ``"auto"`` takes the backbone's default.

    Returns
    -------
    dict
        ``rate``, ``target_rate`` and ``max_duration``.

    Raises
    ------
    ValueError
        When ``max_duration`` is longer than the window the model takes at once.
    """
    window = preprocess.window() if hasattr(preprocess, "window") else None
    if max_duration == "auto":
        max_duration = preprocess.default_max_duration()
    elif max_duration is not None and window is not None and max_duration > window + 1e-9:
        raise ValueError(f"max_duration={max_duration} is longer than the {window:g} s "
                         f"that {spec} takes at once; use at most {window:g} (or "
                         "'auto').")
    return {"rate": rate, "target_rate": preprocess.sampling_rate, "max_duration": max_duration}


def _checked_files(items):
    paths = [os.fspath(p) for p in items]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        if not any(p.lower().endswith(AUDIO_SUFFIXES) or os.sep in p for p in missing):
            raise ValueError(f"an audio backbone got text (e.g. {missing[0][:60]!r}), not "
                             "sounds; give paths to audio files or arrays of samples.")
        shown = ", ".join(repr(p) for p in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise FileNotFoundError(f"audio files do not exist: {shown}{more}")
    sf = _soundfile()
    for p in paths:  # the header only: a corrupt or empty file is named now, not mid-batch
        try:
            info = sf.info(p)
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise ValueError(f"{p!r} is not an audio file that soundfile can read "
                             f"({exc})") from exc
        if info.frames == 0:
            raise ValueError(f"{p!r} is empty: a clip needs at least one sample")
    return paths

"""Batch preprocessing for image, tensor and user-module waveform backbones.

Each preprocessor is a small picklable callable applied to one batch at a time
(inside DataLoader workers when ``num_workers > 0``), so no float copy of the
whole data set ever exists. Its constants come from the weights' own config.
"""

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from .registry import register_preprocess


class ImagePreprocess:
    """Resize the shorter side, center-crop, scale to [0, 1] and normalize.

    The same steps as torchvision's ``weights.transforms()`` and timm's eval
    transform, applied to a whole batch at once when the images share a size.

    Parameters
    ----------
    resize_size : int
        Length of the shorter side after resizing.
    crop_size : int
        Side of the square center crop fed to the network.
    mean, std : sequence of float
        Per-channel normalization constants.
    interpolation : str, default="bilinear"
        ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
    channels : int, default=3
        Channels the network expects; grayscale input is repeated to match.

    Examples
    --------
    >>> import torch
    >>> prep = ImagePreprocess(8, 6, mean=(0.5,) * 3, std=(0.5,) * 3)
    >>> prep(torch.zeros(2, 3, 10, 12, dtype=torch.uint8)).shape
    torch.Size([2, 3, 6, 6])
    """

    def __init__(self, resize_size, crop_size, mean, std, interpolation="bilinear", channels=3):
        self.resize_size = int(resize_size)
        self.crop_size = int(crop_size)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.interpolation = str(interpolation)
        self.channels = int(channels)

    def __repr__(self):
        return (f"ImagePreprocess(resize_size={self.resize_size}, crop_size={self.crop_size}, "
                f"mean={self.mean}, std={self.std}, interpolation={self.interpolation!r})")

    def config(self):
        """The constants that determine the output (used in cache keys)."""
        return (self.resize_size, self.crop_size, tuple(self.mean), tuple(self.std),
                self.interpolation, self.channels)

    def state(self):
        """The constants as a JSON-able dict (what pickles and saved files hold)."""
        return {"kind": "image", "resize_size": self.resize_size, "crop_size": self.crop_size,
                "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "channels": self.channels}

    @classmethod
    def from_state(cls, state):
        """The preprocess :meth:`state` described.

        Examples
        --------
        >>> prep = ImagePreprocess(8, 6, mean=(0.5,) * 3, std=(0.5,) * 3)
        >>> ImagePreprocess.from_state(prep.state()).config() == prep.config()
        True
        """
        return cls(state["resize_size"], state["crop_size"], state["mean"], state["std"],
                   interpolation=state["interpolation"], channels=state["channels"])

    def __call__(self, images):
        """``images``: a uint8/float tensor (B, C, H, W) or a list of (C, H, W)."""
        if isinstance(images, torch.Tensor):
            return self._batch(images)
        return torch.stack([self._batch(img.unsqueeze(0))[0] for img in images])

    def _batch(self, x):
        if x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        interp = InterpolationMode(self.interpolation)
        if min(x.shape[-2:]) != self.resize_size:
            x = F.resize(x, [self.resize_size], interpolation=interp, antialias=True)
        if tuple(x.shape[-2:]) != (self.crop_size, self.crop_size):
            x = F.center_crop(x, [self.crop_size, self.crop_size])
        x = F.to_dtype(x, torch.float32, scale=True)
        return F.normalize(x, self.mean, self.std)


class TensorPreprocess:
    """Turn a batch of numeric rows into a float32 tensor, shape unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> TensorPreprocess()(np.ones((2, 3), dtype=np.int64)).dtype
    torch.float32
    """

    def __call__(self, rows):
        if isinstance(rows, torch.Tensor):
            return rows.float()
        return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))

    def config(self):
        return ("tensor", "float32")

    def state(self):
        """A JSON-able dict (what pickles and saved files hold)."""
        return {"kind": "tensor"}

    @classmethod
    def from_state(cls, state):
        """The preprocess :meth:`state` described."""
        return cls()


class Waveforms:
    """Clips at ``sampling_rate`` as one float32 tensor ``(B, samples)``, for a user's module.

    The clips arrive decoded, mixed down and resampled to ``sampling_rate``
    (:mod:`sktransfer.audio_inputs`); nothing else is done to them (no
    normalization: the module decides). ``pads_exactly`` is False, so
    ``transform`` and ``predict`` batch only clips of one length and the
    module never sees padding; training batches, drawn at random, are
    zero-padded at the end to their longest clip, as speech fine-tuning does.

    Parameters
    ----------
    sampling_rate : int
        The rate (Hz) the module takes.

    Examples
    --------
    >>> import numpy as np
    >>> Waveforms(16000)([np.ones(3, np.float32), np.ones(2, np.float32)])
    tensor([[1., 1., 1.],
            [1., 1., 0.]])
    """

    pads_exactly = False

    def __init__(self, sampling_rate):
        self.sampling_rate = int(sampling_rate)

    def window(self):
        """The longest input the module takes at once: any length (None)."""
        return None

    def default_max_duration(self):
        """Seconds kept of each clip under ``max_duration="auto"``: all of it (None),
        since a user's module has no window sktransfer knows of."""
        return None

    def __call__(self, clips):
        clips = [c.numpy() if isinstance(c, torch.Tensor) else np.asarray(c, np.float32)
                 for c in clips]
        batch = np.zeros((len(clips), max(len(c) for c in clips)), dtype=np.float32)
        for row, clip in zip(batch, clips):
            row[:len(clip)] = clip
        return torch.from_numpy(batch)

    def config(self):
        return ("waveforms", self.sampling_rate)

    def state(self):
        """A JSON-able dict (what pickles and saved files hold)."""
        return {"kind": "waveforms", "sampling_rate": self.sampling_rate}

    @classmethod
    def from_state(cls, state):
        """The preprocess :meth:`state` described."""
        return cls(state["sampling_rate"])


register_preprocess("image", ImagePreprocess.from_state)
register_preprocess("waveforms", Waveforms.from_state)
register_preprocess("tensor", TensorPreprocess.from_state)

"""A Hugging Face image processor's steps, as constants, applied a batch at a time.

:class:`HFImagePreprocess` reads what a model's saved image processor
(``preprocessor_config.json``) does (resize, center crop, rescale,
normalize) and repeats it with the same torchvision operations, in the same
order, as transformers' torchvision processors (``use_fast=True``, the
default since transformers 5) do. On uint8 images the result equals the
processor's ``pixel_values`` to float rounding (the normalization is fused
the same way); the PIL processors (``use_fast=False``) resize with PIL's
filters and differ by a few hundredths of a unit at most
(``tests/backbones/test_hf_vision.py`` measures it). Being torch
operations, the steps run wherever the batch is: on an accelerator,
same-size image arrays are preprocessed there (see
:func:`sktransfer.inference.predict_batches`).

The steps are what the standard processors (ViT, BiT / DINOv2, CLIP,
SigLIP, ConvNeXt, DeiT, ...) share; a processor that works differently
(padding to a multiple, tiling, longest-edge resizing) is refused by name
rather than approximated.
"""

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from .registry import register_preprocess

#: PIL resample codes (what processor configs store) -> torchvision modes,
#: as transformers maps them.
_RESAMPLE = {0: "nearest-exact", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box",
             5: "hamming"}
#: Processor settings these steps reproduce; any other "do_*" switched on is refused.
_KNOWN_SWITCHES = ("do_resize", "do_center_crop", "do_rescale", "do_normalize",
                   "do_convert_rgb")


class HFImagePreprocess:
    """Resize, center-crop, rescale and normalize as a Hugging Face image processor does.

    Parameters
    ----------
    resize : dict or None
        ``{"height": h, "width": w}`` (resize to exactly that),
        ``{"shortest_edge": s}`` (the shorter side to ``s``, the longer in
        proportion, rounded down as transformers rounds) or None (no resize).
    crops : list of (int, int)
        Center crops ``(height, width)`` applied in order after resizing
        (padded with zeros where the image is smaller, as transformers does).
    rescale : float or None
        Factor applied to pixel values (``1/255``), or None for none.
    mean, std : sequence of float or None
        Per-channel normalization, or None for none.
    interpolation : str, default="bilinear"
        A torchvision interpolation mode name (``"bicubic"``).
    channels : int, default=3
        Channels the network expects; grayscale input is repeated to match.
    processor : str, default=""
        The processor class the constants came from (for messages and repr).

    Examples
    --------
    >>> import torch
    >>> prep = HFImagePreprocess({"shortest_edge": 8}, [(6, 6)], 1 / 255, [0.5] * 3, [0.5] * 3)
    >>> prep(torch.zeros(2, 3, 10, 12, dtype=torch.uint8)).shape
    torch.Size([2, 3, 6, 6])
    """

    def __init__(self, resize, crops, rescale, mean, std, interpolation="bilinear", channels=3,
                 processor=""):
        self.resize = None if resize is None else {k: int(v) for k, v in dict(resize).items()}
        if self.resize is not None and set(self.resize) not in ({"height", "width"},
                                                                {"shortest_edge"}):
            raise ValueError(f"resize must name height and width, or shortest_edge; "
                             f"got {resize!r}")
        self.crops = [(int(h), int(w)) for h, w in crops]
        self.rescale = None if rescale is None else float(rescale)
        self.mean = None if mean is None else [float(m) for m in mean]
        self.std = None if std is None else [float(s) for s in std]
        self.interpolation = str(interpolation)
        InterpolationMode(self.interpolation)  # an unknown name fails here, not per batch
        self.channels = int(channels)
        self.processor = str(processor)

    @classmethod
    def from_processor(cls, processor, image_size=None, *, spec=""):
        """The steps of a transformers image processor, optionally at another crop side.

        Parameters
        ----------
        processor : transformers image processor
            Loaded with ``AutoImageProcessor`` (either backend: the saved
            settings are the same).
        image_size : int, optional
            Side of the square fed to the network instead of the
            processor's; the resize keeps the processor's resize/crop ratio.
        spec : str
            Named in errors.
        """
        name = type(processor).__name__
        on = {k for k in dir(processor) if k.startswith("do_") and
              getattr(processor, k, None) is True}
        unknown = sorted(on - set(_KNOWN_SWITCHES))
        if unknown:
            raise ValueError(f"{spec}: its image processor {name} also does {unknown}, which "
                             "sktransfer does not reproduce; embed with a model whose processor "
                             "only resizes, crops, rescales and normalizes")
        resize = _size(processor.size, name, spec) if processor.do_resize else None
        crops = []
        crop_pct = getattr(processor, "crop_pct", None)
        if resize and "shortest_edge" in resize and crop_pct and _is_convnext(processor):
            # ConvNeXt's rule: below 384 px, resize to shortest_edge / crop_pct and
            # crop back to shortest_edge; from 384 px on, warp to a square.
            edge = resize["shortest_edge"]
            if edge < 384:
                resize, crops = {"shortest_edge": int(edge / crop_pct)}, [(edge, edge)]
            else:
                resize = {"height": edge, "width": edge}
        if getattr(processor, "do_center_crop", False):
            crop = _size(processor.crop_size, name, spec)
            if set(crop) != {"height", "width"}:
                raise ValueError(f"{spec}: crop_size {processor.crop_size!r} of {name} "
                                 "names no height and width")
            crops.append((crop["height"], crop["width"]))
        if image_size is not None:
            resize, crops = _at_size(resize, crops, int(image_size))
        resample = processor.resample
        resample = getattr(resample, "value", resample)
        if resample not in _RESAMPLE:
            raise ValueError(f"{spec}: resample={processor.resample!r} of {name} is not a PIL "
                             "resampling filter sktransfer knows")
        return cls(resize, crops, processor.rescale_factor if processor.do_rescale else None,
                   _channels(processor.image_mean) if processor.do_normalize else None,
                   _channels(processor.image_std) if processor.do_normalize else None,
                   interpolation=_RESAMPLE[resample], processor=name)

    def __repr__(self):
        return (f"HFImagePreprocess(resize={self.resize}, crops={self.crops}, "
                f"rescale={self.rescale}, mean={self.mean}, std={self.std}, "
                f"interpolation={self.interpolation!r}, processor={self.processor!r})")

    @property
    def input_size(self):
        """``(height, width)`` of the output when it does not depend on the input, else None."""
        if self.crops:
            return self.crops[-1]
        if self.resize and "height" in self.resize:
            return self.resize["height"], self.resize["width"]
        return None

    def config(self):
        """The constants that determine the output (used in cache keys)."""
        return ("hf-image", tuple(sorted((self.resize or {}).items())), tuple(self.crops),
                self.rescale, None if self.mean is None else tuple(self.mean),
                None if self.std is None else tuple(self.std), self.interpolation,
                self.channels)

    def state(self):
        """The constants as a JSON-able dict (what pickles and saved files hold)."""
        return {"kind": "hf-image", "resize": self.resize, "crops": [list(c) for c in self.crops],
                "rescale": self.rescale, "mean": self.mean, "std": self.std,
                "interpolation": self.interpolation, "channels": self.channels,
                "processor": self.processor}

    @classmethod
    def from_state(cls, state):
        """The preprocess :meth:`state` described.

        Examples
        --------
        >>> prep = HFImagePreprocess({"height": 4, "width": 4}, [], 1 / 255, None, None)
        >>> HFImagePreprocess.from_state(prep.state()).config() == prep.config()
        True
        """
        return cls(state["resize"], state["crops"], state["rescale"], state["mean"],
                   state["std"], interpolation=state["interpolation"],
                   channels=state["channels"], processor=state.get("processor", ""))

    def __call__(self, images):
        """``images``: a uint8/float tensor (B, C, H, W) or a list of (C, H, W)."""
        if isinstance(images, torch.Tensor):
            return self._batch(images)
        out = [self._batch(img.unsqueeze(0))[0] for img in images]
        sizes = {tuple(x.shape[-2:]) for x in out}
        if len(sizes) > 1:
            raise ValueError(f"the image processor ({self.processor}) gives images of "
                             f"different sizes {sorted(sizes)} for images of different "
                             "sizes; give images of one size, or pass image_size")
        return torch.stack(out)

    def _batch(self, x):
        if x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)  # what grayscale_to_rgb gives
        if x.is_floating_point():
            # Unit floats (what sktransfer.inputs gives for float images) on the
            # 0-255 scale the processor's rescale factor expects.
            x = x * 255.0
        if self.resize is not None:
            x = F.resize(x, _resized(self.resize, x.shape[-2:]),
                         interpolation=InterpolationMode(self.interpolation), antialias=True)
        for height, width in self.crops:
            x = _center_crop(x, height, width)
        return self._scaled(x)

    def _scaled(self, x):
        # Fused as transformers fuses it (mean and std divided by the rescale
        # factor, one normalize), so the floats round the same way.
        if self.mean is not None:
            mean, std = self._fused()
            return F.normalize(x.to(torch.float32), mean, std)
        x = x.to(torch.float32)
        return x * self.rescale if self.rescale is not None else x

    def _fused(self):
        """Mean and std over the rescale factor, rounded to float32 as transformers'
        tensors round them (on the CPU: the same float32 products on any device)."""
        scale = 1.0 if self.rescale is None else 1.0 / self.rescale
        return ((torch.tensor(self.mean) * scale).tolist(),
                (torch.tensor(self.std) * scale).tolist())


def _resized(resize, size):
    """Output ``[height, width]`` of a resize, computed as transformers computes it."""
    if "height" in resize:
        return [resize["height"], resize["width"]]
    height, width = int(size[0]), int(size[1])
    edge = resize["shortest_edge"]
    short, long = (height, width) if height <= width else (width, height)
    new_long = int(edge * long / short)
    return [edge, new_long] if height <= width else [new_long, edge]


def _center_crop(x, height, width):
    """transformers' center crop: zero padding where the image is smaller, top-left rounded down.

    (torchvision's own center crop rounds the offset to nearest, one pixel
    off for odd margins.)
    """
    h, w = x.shape[-2:]
    if height > h or width > w:
        pad_w, pad_h = max(width - w, 0), max(height - h, 0)
        x = F.pad(x, [pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2], fill=0)
        h, w = x.shape[-2:]
        if (h, w) == (height, width):
            return x
    return F.crop(x, int((h - height) / 2.0), int((w - width) / 2.0), height, width)


def _size(size, name, spec):
    """A processor's size as a plain dict of the keys set."""
    size = {k: v for k, v in dict(size).items() if v is not None}
    if set(size) in ({"height", "width"}, {"shortest_edge"}):
        return {k: int(v) for k, v in size.items()}
    raise ValueError(f"{spec}: its image processor {name} resizes to {size!r}; sktransfer "
                     "reproduces resizing to a height and width or a shortest edge")


def _is_convnext(processor):
    # Its resize is its own (the crop_pct rule); other processors with a
    # crop_pct attribute (none among transformers' today) resize plainly.
    return "ConvNext" in type(processor).__name__


def _channels(values):
    return [float(v) for v in values] if isinstance(values, (list, tuple)) else [float(values)] * 3


def _at_size(resize, crops, side):
    """``resize`` and ``crops`` scaled so the network sees ``side`` x ``side``."""
    if crops:
        crop_h, _ = crops[-1]
        if resize and "shortest_edge" in resize:
            resize = {"shortest_edge": round(side * resize["shortest_edge"] / crop_h)}
        elif resize:
            ratio = side / crop_h
            resize = {"height": round(resize["height"] * ratio),
                      "width": round(resize["width"] * ratio)}
        return resize, [(side, side)]
    if resize and "shortest_edge" in resize:
        return {"shortest_edge": side}, [(side, side)]
    return {"height": side, "width": side}, []


register_preprocess("hf-image", HFImagePreprocess.from_state)

"""Image files as pixels: paths checked up front, decoded when their batch is drawn.

A file (a path, or the bytes the feature cache hashed) or a PIL image becomes
a ``(C, H, W)`` tensor, uint8 for 8-bit images and float32 in [0, 1] for
16-bit and float ones. :data:`DECODING` versions this rule for the caches.
"""

import io
import os

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm")
#: Version of how image files decode to pixels. Bump it whenever a file starts
#: decoding to other values (2: 16-bit images scaled, float ones kept), so that
#: caches keyed on file bytes do not serve features of the old pixels.
DECODING = 2
# PIL modes of 16-bit unsigned samples (any byte order): scaled by 1 / 65535.
_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# PIL modes whose visible pixels are gray levels: decoded to one channel, like "L".
_GRAY_MODES = ("1", "LA")


def is_pil(x):
    """Whether ``x`` is a PIL image (PIL is imported only when this is asked)."""
    from PIL import Image

    return isinstance(x, Image.Image)


def is_pathlike(x):
    """Whether ``x`` names a file: a string or an ``os.PathLike``."""
    return isinstance(x, (str, os.PathLike))


def _looks_like_path(s):
    s = os.fspath(s)
    return s.lower().endswith(IMAGE_SUFFIXES) or os.sep in s


def checked_paths(items):
    """``items`` as a list of path strings, refused unless every file exists.

    Raises
    ------
    ValueError
        When none of the missing paths looks like a path (text given to an
        image backbone).
    FileNotFoundError
        For paths that do not exist (the first few are named).
    """
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


def decode_image(item):
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

    if is_pil(item):
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

"""Light image augmentation applied to a whole preprocessed batch at once."""

import math

import torch
from torch.nn import functional as F


class FlipAndResizedCrop:
    """Random horizontal flip and random resized crop of a ``(B, C, H, W)`` batch.

    Every image gets its own crop (an area fraction drawn from ``scale`` and
    an aspect ratio drawn log-uniformly from ``ratio``) and its own coin flip,
    and all of them are resampled back to ``H x W`` in one ``grid_sample``
    call on the batch's device, with no Python work per image. It runs on the
    normalized tensor, after the backbone's preprocessing.

    The random draws come from torch's CPU generator, so a seeded fit is
    reproducible whichever device it trains on.

    Parameters
    ----------
    scale : (float, float), default=(0.6, 1.0)
        Range of the crop's area as a fraction of the image; light by design
        (torchvision's ImageNet recipe uses (0.08, 1.0)).
    ratio : (float, float), default=(3/4, 4/3)
        Range of the crop's width / height.
    flip : bool, default=True
        Mirror each image left-right with probability 1/2.

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> FlipAndResizedCrop()(torch.rand(4, 3, 16, 16)).shape
    torch.Size([4, 3, 16, 16])
    """

    def __init__(self, scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3), flip=True):
        self.scale = tuple(float(s) for s in scale)
        self.ratio = tuple(float(r) for r in ratio)
        self.flip = bool(flip)

    def __repr__(self):
        return f"FlipAndResizedCrop(scale={self.scale}, ratio={self.ratio}, flip={self.flip})"

    def __call__(self, images):
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError("image augmentation needs a preprocessed (B, C, H, W) tensor")
        n = images.shape[0]
        area = torch.empty(n).uniform_(*self.scale)
        log_ratio = torch.empty(n).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]))
        aspect = log_ratio.exp()
        # Width and height of the crop, as fractions of the image's.
        width = (area * aspect).sqrt().clamp(max=1.0)
        height = (area / aspect).sqrt().clamp(max=1.0)
        # Crop centers that keep the crop inside the image (coordinates in [-1, 1]).
        shift_x = (torch.rand(n) * 2 - 1) * (1 - width)
        shift_y = (torch.rand(n) * 2 - 1) * (1 - height)
        sign = torch.where(torch.rand(n) < 0.5, -1.0, 1.0) if self.flip else torch.ones(n)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = width * sign
        theta[:, 0, 2] = shift_x
        theta[:, 1, 1] = height
        theta[:, 1, 2] = shift_y
        theta = theta.to(device=images.device, dtype=images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection",
                             align_corners=False)

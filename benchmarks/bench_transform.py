"""Image ``transform`` throughput against a hand-written PyTorch loop.

Both sides embed the same uint8 images ``(N, H, W, C)`` with the same
resnet18 weights at the same batch size: the reference is the loop a careful
user writes by hand, with the weights' own ``transforms()`` preset (resize,
center crop, normalize) applied to each batched tensor, ``eval()`` and
``torch.inference_mode()``, and bf16 autocast on CUDA as ``precision="auto"``
chooses there. Random weights (``weights=None``) run at the speed of
pretrained ones and need no download.
"""

import contextlib

import numpy as np
import torch
import torchvision

from harness import comparison_table, interleaved, ratio_summary
from sktransfer import PretrainedFeatureTransformer

NAME = "transform"
TARGET = 0.95


def _sizes(quick):
    # Raw images larger than the crop and not square, so that the resize and
    # the crop both do real work, as they do on photographs.
    if quick:
        return dict(n=64, height=96, width=128, image_size=64, batch_size=32, repeats=5)
    return dict(n=128, height=240, width=320, image_size=None, batch_size=32, repeats=11)


def reference_loop(model, preset, images, batch_size, device, dtype):
    """Embed ``images`` the way a careful hand-written loop does."""
    out = None
    amp = (torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None
           else contextlib.nullcontext())
    with torch.inference_mode(), amp:
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2)
            # On a GPU, copy the uint8 batch (4x smaller than float) and
            # preprocess it there, as a careful loop would.
            x = preset(x.to(device, non_blocking=True))
            features = model(x).float().cpu().numpy()
            if out is None:
                out = np.empty((len(images), features.shape[1]), dtype=np.float32)
            out[start:start + batch_size] = features
    return out


def run(settings):
    sizes = _sizes(settings.quick)
    device = torch.device(settings.device)
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (sizes["n"], sizes["height"], sizes["width"], 3),
                         dtype=np.uint8)

    pft = PretrainedFeatureTransformer(
        "torchvision:resnet18", weights=None, batch_size=sizes["batch_size"],
        device=settings.device, image_size=sizes["image_size"], random_state=0,
    ).fit(images[:2])

    # The reference: the same network and weights, the weights' own preset.
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    default = weights.transforms()
    crop, resize = default.crop_size[0], default.resize_size[0]
    if sizes["image_size"] is not None:
        # Keep the preset's resize/crop ratio at the smaller crop.
        crop, resize = sizes["image_size"], round(sizes["image_size"] * resize / crop)
    preset = weights.transforms(crop_size=crop, resize_size=resize)
    model = torchvision.models.resnet18(weights=None)
    model.fc = torch.nn.Identity()
    model.load_state_dict(pft.backbone_.module.state_dict())
    model = model.to(device).eval()
    dtype = None
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def reference():
        return reference_loop(model, preset, images, sizes["batch_size"], device, dtype)

    def sktransfer():
        return pft.transform(images)

    # One untimed call each warms up allocators and kernels, and gives the
    # outputs that show both sides compute the same features.
    expected, got = reference(), sktransfer()
    scale = np.abs(expected).max()
    rel_err = float(np.abs(got - expected).max() / scale)
    cos = _min_cosine(got, expected)

    wall, cpu = interleaved({"hand-written loop": reference, "sktransfer": sktransfer},
                            sizes["repeats"], settings.device)
    median = ratio_summary(wall["hand-written loop"], wall["sktransfer"])[0]
    verdict = "meets" if median >= TARGET else "misses"
    # bf16 on CUDA rounds both sides differently, so allow it more slack.
    agree = "agree" if cos > (0.99 if dtype is not None else 0.999) else "DISAGREE"
    where = (" On CUDA the hand-written loop copies each uint8 batch to the GPU and "
             "preprocesses it there; sktransfer preprocesses on the CPU."
             if device.type == "cuda" else "")
    return [comparison_table(
        f"transform: torchvision resnet18 on uint8 images, {settings.device}", "images",
        sizes["n"], wall, cpu, settings.device,
        notes=[
            f"{sizes['n']} images {sizes['height']}x{sizes['width']}x3 uint8, resized to "
            f"{resize} and center-cropped to {crop}, batch {sizes['batch_size']}, "
            f"{sizes['repeats']} interleaved repeats. Ratio = sktransfer's throughput over "
            f"the hand-written loop's within each repeat; target >= {TARGET} (the median "
            f"{verdict} it).{where}",
            f"Outputs {agree}: max |difference| = {rel_err:.2e} of max |feature|, minimum "
            f"cosine similarity {cos:.6f}.",
        ],
    )]


def _min_cosine(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())

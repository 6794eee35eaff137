"""Hugging Face image encoder ``transform`` throughput against the processor + model loop.

Both sides embed the same uint8 images ``(N, H, W, C)`` with the same
DINOv2 ViT-S/14-sized network (hidden 384, 12 layers, 6 heads) at the same
batch size: the reference is the loop the model card shows, a careful
version of it: the model's ``AutoImageProcessor`` (transformers' default,
torchvision backend) on each batch, ``eval()``, ``torch.inference_mode()``
and ``pooler_output`` (DINOv2's documented embedding); bf16 autocast on CUDA
as ``precision="auto"`` chooses there. The model is built from its config
with random weights and saved with its processor to a temporary folder
(random weights run at the speed of pretrained ones and need no download).
"""

import contextlib
import tempfile

import numpy as np
import torch

from harness import comparison_table, interleaved, ratio_summary
from sktransfer import PretrainedFeatureTransformer

NAME = "hf_image"
TARGET = 1.0


def _sizes(quick):
    # Photographs are larger than the crop and not square: the resize and
    # the crop both do real work.
    if quick:
        return dict(n=16, height=120, width=160, crop=112, batch_size=16, repeats=3)
    return dict(n=64, height=240, width=320, crop=224, batch_size=32, repeats=7)


def _save_model(folder, crop):
    """A DINOv2-S-sized model and its processor (resize 256/224 of the crop, bicubic)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.Dinov2Config(hidden_size=384, num_hidden_layers=12,
                                       num_attention_heads=6, patch_size=14, image_size=crop)
    transformers.Dinov2Model(config).save_pretrained(folder)
    transformers.BitImageProcessor(
        size={"shortest_edge": round(crop * 256 / 224)},
        crop_size={"height": crop, "width": crop},
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)


def reference_loop(processor, model, images, batch_size, device, dtype):
    """Embed ``images`` as the model card's processor + model loop does, batched."""
    out = None
    amp = (torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None
           else contextlib.nullcontext())
    with torch.inference_mode(), amp:
        for start in range(0, len(images), batch_size):
            batch = list(images[start:start + batch_size])
            # On a GPU the processor runs there (its torchvision backend takes a device).
            kwargs = {"device": device} if device.type != "cpu" else {}
            pixels = processor(images=batch, return_tensors="pt", **kwargs)["pixel_values"]
            features = model(pixel_values=pixels.to(device)).pooler_output.float().cpu().numpy()
            if out is None:
                out = np.empty((len(images), features.shape[1]), dtype=np.float32)
            out[start:start + batch_size] = features
    return out


def run(settings):
    import transformers

    sizes = _sizes(settings.quick)
    device = torch.device(settings.device)
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (sizes["n"], sizes["height"], sizes["width"], 3),
                         dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        _save_model(folder, sizes["crop"])
        pft = PretrainedFeatureTransformer(f"hf:{folder}", batch_size=sizes["batch_size"],
                                           device=settings.device).fit(images[:2])
        processor = transformers.AutoImageProcessor.from_pretrained(folder)
        model = transformers.AutoModel.from_pretrained(folder).to(device).eval()
    dtype = None
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def reference():
        return reference_loop(processor, model, images, sizes["batch_size"], device, dtype)

    def sktransfer():
        return pft.transform(images)

    # One untimed call each warms up allocators and kernels, and gives the
    # outputs that show both sides compute the same features.
    expected, got = reference(), sktransfer()
    rel_err = float(np.abs(got - expected).max() / np.abs(expected).max())
    cos = _min_cosine(got, expected)

    wall, cpu = interleaved({"processor + model loop": reference, "sktransfer": sktransfer},
                            sizes["repeats"], settings.device)
    median = ratio_summary(wall["processor + model loop"], wall["sktransfer"])[0]
    verdict = "meets" if median >= TARGET else "misses"
    agree = "agree" if cos > (0.99 if dtype is not None else 0.999) else "DISAGREE"
    resize = round(sizes["crop"] * 256 / 224)
    tables = [comparison_table(
        f"transform: Hugging Face DINOv2 (ViT-S/14 size) on uint8 images, {settings.device}",
        "images", sizes["n"], wall, cpu, settings.device,
        notes=[
            f"{sizes['n']} images {sizes['height']}x{sizes['width']}x3 uint8, resized "
            f"(bicubic) to {resize} and center-cropped to {sizes['crop']} by the saved "
            f"BitImageProcessor, batch {sizes['batch_size']}, {sizes['repeats']} interleaved "
            f"repeats. Ratio = sktransfer's throughput over the processor + model loop's "
            f"within each repeat; target >= {TARGET} (the median {verdict} it).",
            f"Outputs {agree}: max |difference| = {rel_err:.2e} of max |feature|, minimum "
            f"cosine similarity {cos:.6f}.",
        ],
    )]
    if device.type == "cpu":
        tables.append(_preprocessing_table(pft, processor, images, sizes))
    return tables


def _preprocessing_table(pft, processor, images, sizes):
    """The preprocessing alone (the part sktransfer does itself): a few milliseconds
    per batch, which the network's seconds hide in the table above."""
    batch = sizes["batch_size"]
    chunks = [images[i:i + batch] for i in range(0, len(images), batch)]
    prep = pft.backbone_.preprocess

    def by_processor():
        return [processor(images=list(c), return_tensors="pt")["pixel_values"] for c in chunks]

    def by_sktransfer():
        return [prep(torch.from_numpy(c).permute(0, 3, 1, 2)) for c in chunks]

    same = all(torch.allclose(a, b, atol=1e-5, rtol=0)
               for a, b in zip(by_processor(), by_sktransfer()))
    repeats = 5 if sizes["n"] < 64 else 21
    wall, cpu = interleaved({"AutoImageProcessor": by_processor,
                             "sktransfer preprocess": by_sktransfer}, repeats)
    return comparison_table(
        "preprocessing alone: the saved BitImageProcessor against sktransfer's, cpu",
        "images", len(images), wall, cpu, "cpu",
        notes=[f"The same {len(images)} uint8 images in batches of {batch}, "
               f"{repeats} interleaved repeats: the processor on a list of HWC arrays (as "
               f"its documentation calls it) against HFImagePreprocess on the (B, C, H, W) "
               f"batch sktransfer collates. Pixel values "
               f"{'equal to 1e-5' if same else 'DIFFER'}."])


def _min_cosine(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())

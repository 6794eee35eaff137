"""Peak memory and time of ``fit`` with and without ``gradient_checkpointing``.

Two backbones, random weights, batch 32, one epoch of a few steps:

- a user's module, checkpointed by parameter group: 12 residual MLP blocks
  (width 256, hidden 1024) over 64 tokens per sample;
- a timm ViT (ViT-Tiny's width, 12 blocks, 64 px images in 8 px patches:
  64 tokens), checkpointed by timm's ``set_grad_checkpointing``.

Each fit runs in a fresh spawned process (so memory freed by another run
cannot hide a rise), the two settings alternating; the table gives the median
rise of resident memory (RSS) over the fit, and on a GPU the peak of
``torch.cuda.max_memory_allocated``. Run alone with
``python benchmarks/bench_checkpointing.py [--quick] [--device cuda]``.
"""

import gc
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_memory import PeakRSS  # noqa: E402
from harness import Settings, Table  # noqa: E402

NAME = "checkpointing"
BATCH_SIZE = 32
TOKENS, WIDTH = 64, 256


def _sizes(quick):
    return dict(n=64, repeats=1) if quick else dict(n=128, repeats=3)


class Block(nn.Module):
    """A pre-norm residual MLP block, a transformer's without attention."""

    def __init__(self, width, hidden):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class TokenMean(nn.Module):
    def forward(self, x):
        return x.mean(dim=1)


def token_mlp():
    """12 blocks over (N, TOKENS * 32) inputs read as TOKENS tokens of 32 values."""
    return nn.Sequential(nn.Unflatten(1, (TOKENS, 32)), nn.Linear(32, WIDTH),
                         *[Block(WIDTH, 4 * WIDTH) for _ in range(12)], TokenMean())


def small_vit():
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64,
                             patch_size=8, num_classes=0)


def _data(model, n):
    rng = np.random.RandomState(0)
    shape = (n, TOKENS * 32) if model == "token_mlp" else (n, 3, 64, 64)
    X = rng.rand(*shape).astype(np.float32)
    return X, rng.randint(0, 4, n)


def measure(model, checkpointing, n, device, threads):
    """In a fresh process: the RSS rise (and GPU peak) of one ``fit``."""
    from sktransfer import FineTunedClassifier

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    module = token_mlp() if model == "token_mlp" else small_vit()
    X, y = _data(model, n)
    clf = FineTunedClassifier(module, gradient_checkpointing=checkpointing, max_epochs=1,
                              batch_size=BATCH_SIZE, early_stopping=None, schedule=None,
                              device=device, random_state=0)
    gc.collect()
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with PeakRSS() as rss:
        clf.fit(X, y)
    return dict(seconds=time.perf_counter() - start, rise=rss.peak - rss.start,
                method=rss.method, gpu_peak=torch.cuda.max_memory_allocated() if cuda else None)


def run(settings):
    sizes = _sizes(settings.quick)
    spawn = multiprocessing.get_context("spawn")
    mb = 2 ** 20
    rows, method = [], None
    for model, label in (("token_mlp", "12-block MLP, 64 tokens (by group)"),
                         ("vit", "timm ViT-Tiny, 64 px / 8 px patches (timm)")):
        results = {False: [], True: []}
        for _ in range(sizes["repeats"]):
            for checkpointing in (False, True):  # alternating, one process each
                with ProcessPoolExecutor(1, mp_context=spawn) as pool:
                    results[checkpointing].append(pool.submit(
                        measure, model, checkpointing, sizes["n"], settings.device,
                        settings.threads).result())
        med = {k: {m: statistics.median(r[m] for r in v) for m in ("seconds", "rise")}
               for k, v in results.items()}
        method = results[False][0]["method"]
        row = [label, med[False]["rise"] / mb, med[True]["rise"] / mb,
               med[True]["rise"] / med[False]["rise"],
               med[False]["seconds"], med[True]["seconds"]]
        if results[False][0]["gpu_peak"] is not None:
            gpu = {k: statistics.median(r["gpu_peak"] for r in v) for k, v in results.items()}
            row += [gpu[False] / mb, gpu[True] / mb, gpu[True] / gpu[False]]
        rows.append(row)
    columns = ["backbone", "RSS rise off (MB)", "on (MB)", "on / off", "fit off (s)", "on (s)"]
    if len(rows[0]) > len(columns):
        columns += ["GPU peak off (MB)", "on (MB)", "on / off"]
    notes = [f"Batch {BATCH_SIZE}, {sizes['n']} samples, one epoch, AdamW; medians of "
             f"{sizes['repeats']} fresh processes per setting, alternating; RSS peak by "
             f"{method}. The rise covers weights, gradients and optimizer state as well as "
             "activations, which only checkpointing changes."]
    return [Table("Gradient checkpointing: peak memory of fit", columns, rows, notes)]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    for table in run(Settings(device=args.device, quick=args.quick, threads=args.threads)):
        print(table.to_markdown())

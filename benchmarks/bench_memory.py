"""Peak memory of ``transform`` over images given as file paths.

sktransfer decodes, resizes and normalizes a batch at a time and keeps only
the output features, so the memory ``transform`` needs should be the output
plus a constant that depends on the batch, not on the number of images. This
benchmark writes small PNG files, embeds the first 5,000 and then all 20,000
of them, each in a fresh process, and compares the rise in resident memory
(RSS) with the output's size and with what holding the decoded images would
take (as uint8, and as the float32 copy a network is fed).
"""

import gc
import multiprocessing
import os
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from harness import Table

NAME = "memory"
SIDE = 64  # pixels of each PNG file
IMAGE_SIZE = 32  # crop fed to the network: small, so 20,000 images take seconds
BATCH_SIZE = 32


def _sizes(quick):
    return dict(counts=(500, 2000)) if quick else dict(counts=(5000, 20000))


def write_pngs(directory, n, seed=0):
    """Write ``n`` smooth random RGB PNGs of ``SIDE`` pixels; return their paths.

    Upscaled 8x8 noise compresses like a photograph's smooth regions, so the
    files stay small and the test exercises real PNG decoding.
    """
    from PIL import Image

    rng = np.random.RandomState(seed)
    paths = []
    for i in range(n):
        small = Image.fromarray(rng.randint(0, 256, (8, 8, 3), dtype=np.uint8))
        path = os.path.join(directory, f"{i:05d}.png")
        small.resize((SIDE, SIDE), Image.BILINEAR).save(path)
        paths.append(path)
    return paths


class PeakRSS:
    """The highest resident memory of this process within a ``with`` block.

    The kernel's own high-water mark (``VmHWM``) is exact; it is reset on
    entry through ``/proc/self/clear_refs``. Where that is not allowed, a
    thread samples ``/proc/self/statm`` every millisecond instead.
    """

    def __enter__(self):
        self.start = _rss()
        self._sampled = self.start
        self._stop = threading.Event()
        self._thread = None
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset VmHWM to the current RSS
            self._kernel = True
        except OSError:
            self._kernel = False
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.001):
            self._sampled = max(self._sampled, _rss())

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self.peak = _high_water_mark() if self._kernel else max(self._sampled, _rss())
        self.method = "VmHWM" if self._kernel else "sampled statm"


def _rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _high_water_mark():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("VmHWM not in /proc/self/status")


def measure(paths, device, threads):
    """In a fresh process: the RSS rise of one ``transform`` over ``paths``."""
    from sktransfer import PretrainedFeatureTransformer

    torch.set_num_threads(threads)
    pft = PretrainedFeatureTransformer(
        "torchvision:resnet18", weights=None, image_size=IMAGE_SIZE, batch_size=BATCH_SIZE,
        device=device, random_state=0,
    ).fit(paths[:2])
    # A first small call pays the one-time costs (thread pools, kernel
    # caches, the weights' copy on a GPU), which do not depend on the data.
    pft.transform(paths[:2 * BATCH_SIZE])
    gc.collect()
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        gpu_start = torch.cuda.memory_allocated()
    start = time.perf_counter()
    with PeakRSS() as rss:
        out = pft.transform(paths)
    return dict(
        seconds=time.perf_counter() - start,
        rise=rss.peak - rss.start,
        method=rss.method,
        output=out.nbytes,
        gpu_peak=(torch.cuda.max_memory_allocated() - gpu_start) if cuda else None,
    )


def run(settings):
    sizes = _sizes(settings.quick)
    cuda = torch.device(settings.device).type == "cuda"
    mb = 2 ** 20
    with tempfile.TemporaryDirectory(prefix="sktransfer-bench-") as directory:
        paths = write_pngs(directory, max(sizes["counts"]))
        results = []
        # Spawned processes start from a clean interpreter, so memory freed
        # (but kept by the allocator) in earlier benchmarks cannot hide a rise.
        spawn = multiprocessing.get_context("spawn")
        for n in sizes["counts"]:
            with ProcessPoolExecutor(1, mp_context=spawn) as pool:
                job = pool.submit(measure, paths[:n], settings.device, settings.threads)
                results.append((n, job.result()))

    columns = ["images", "output (MB)", "peak RSS rise (MB)", "rise - output (MB)",
               "decoded uint8 images (MB)", "float32 copy (MB)", "images/s"]
    if cuda:
        columns.append("GPU peak (MB)")
    rows = []
    for n, r in results:
        decoded = n * SIDE * SIDE * 3
        row = [n, r["output"] / mb, r["rise"] / mb, (r["rise"] - r["output"]) / mb,
               decoded / mb, 4 * decoded / mb, n / r["seconds"]]
        if cuda:
            row.append(r["gpu_peak"] / mb)
        rows.append(row)
    (n_small, small), (n_large, large) = results
    extra_small = (small["rise"] - small["output"]) / mb
    extra_large = (large["rise"] - large["output"]) / mb
    grown_data = (n_large - n_small) * SIDE * SIDE * 3 / mb
    # O(batch) means the memory beyond the output stays put as N grows; allow
    # a tenth of the data's growth for allocator and measurement slack.
    if extra_large - extra_small <= 0.1 * grown_data:
        verdict = "Memory beyond the output does not grow with the number of images."
    else:
        verdict = "Memory beyond the output GROWS with the number of images."
    return [Table(
        title=f"transform memory: resnet18 on PNG file paths, {settings.device}",
        columns=columns,
        rows=rows,
        notes=[
            f"{SIDE}x{SIDE} RGB PNG files given as a list of paths, center-cropped to "
            f"{IMAGE_SIZE}, batch {BATCH_SIZE}, each count in a fresh process after a "
            f"warm-up call; peak RSS from {large['method']}. MB = 2^20 bytes.",
            f"Beyond its output, transform needed {extra_small:.1f} MB for {n_small:,} "
            f"images and {extra_large:.1f} MB for {n_large:,}; the {n_large - n_small:,} more "
            f"images would take {grown_data:.0f} MB more as decoded uint8. {verdict}",
        ],
    )]

"""GridSearchCV over the model after a frozen backbone: with the feature cache and without.

The search is the one users run most: ``Pipeline(PretrainedFeatureTransformer
(resnet18), SVC)`` with 10 values of ``C`` and 5-fold cross-validation. Without
a cache every one of the 50 fits (and the final refit) embeds its training
and test folds again; with ``cache=`` each distinct image is embedded once and
every later fit reads it back. Both searches run on the same images, in the
same process, one after the other, and must agree on ``best_params_`` and
``best_score_``. A second search on the now warm cache shows what a rerun
(another grid, another session on the same data) costs.

The images are scikit-learn's digits (1,797 real 8x8 scans), scaled up to
uint8 ``(N, side, side)`` arrays with each pixel repeated, so no download is
needed; random weights (``weights=None``) run at the speed of pretrained ones.

    python benchmarks/bench_cache.py [--quick] [--threads N]
"""

import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Settings, Table  # noqa: E402
from sktransfer import PretrainedFeatureTransformer  # noqa: E402

NAME = "cache"
TARGET = 10.0


def _sizes(quick):
    if quick:
        return dict(n=200, side=32, image_size=32, n_c=3, cv=3)
    return dict(n=1000, side=64, image_size=64, n_c=10, cv=5)


def digits_images(n, side):
    """``n`` digits as uint8 ``(n, side, side)`` images, and their labels."""
    digits = load_digits()
    scale = side // 8
    images = (digits.images[:n] * (255 / 16)).round().astype(np.uint8)
    return images.repeat(scale, axis=1).repeat(scale, axis=2), digits.target[:n]


def search(images, labels, sizes, device, cache):
    """Run the grid search once; return it with its wall and CPU seconds."""
    pipe = Pipeline([
        ("features", PretrainedFeatureTransformer(
            "torchvision:resnet18", weights=None, image_size=sizes["image_size"],
            device=device, random_state=0, cache=cache)),
        ("svc", SVC()),
    ])
    grid = {"svc__C": list(np.logspace(-2, 3, sizes["n_c"]))}
    start, start_cpu = time.perf_counter(), time.process_time()
    fitted = GridSearchCV(pipe, grid, cv=sizes["cv"]).fit(images, labels)
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    print(f"  search with cache={'yes' if cache else 'no'}: {wall:.1f} s wall, {cpu:.1f} s CPU",
          file=sys.stderr, flush=True)
    return fitted, wall, cpu


def run(settings):
    sizes = _sizes(settings.quick)
    images, labels = digits_images(sizes["n"], sizes["side"])
    cache_dir = tempfile.mkdtemp(prefix="sktransfer-bench-cache-")
    try:
        # Cold cache first, then no cache, then the warm rerun: the ratio of
        # interest (no cache / cold cache) is measured back to back.
        cold, *t_cold = search(images, labels, sizes, settings.device, cache_dir)
        plain, *t_plain = search(images, labels, sizes, settings.device, None)
        warm, *t_warm = search(images, labels, sizes, settings.device, cache_dir)
        stored = sum(os.path.getsize(os.path.join(root, f))
                     for root, _, files in os.walk(cache_dir) for f in files)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)

    same = all(s.best_params_ == plain.best_params_ and s.best_score_ == plain.best_score_
               for s in (cold, warm))
    scores = np.array([r.cv_results_["mean_test_score"] for r in (plain, cold, warm)])
    fits = sizes["n_c"] * sizes["cv"] + 1
    threads = torch.get_num_threads()
    rows = []
    for name, fitted, (wall, cpu) in (("no cache", plain, t_plain),
                                      ("cache, first run (cold)", cold, t_cold),
                                      ("cache, second run (warm)", warm, t_warm)):
        rows.append([name, wall, t_plain[0] / wall, cpu, t_plain[1] / cpu,
                     f"{fitted.best_params_['svc__C']:.4g}", f"{fitted.best_score_:.4f}"])
    notes = [
        f"{sizes['n']:,} digits images, uint8 {sizes['side']}x{sizes['side']}, "
        f"torchvision resnet18 (weights=None, random_state=0) at "
        f"image_size={sizes['image_size']} on {settings.device} "
        f"({threads} torch thread{'s' if threads != 1 else ''}); GridSearchCV of "
        f"{sizes['n_c']} values of C x {sizes['cv']}-fold CV ({fits} pipeline fits with the "
        "refit), n_jobs=1. "
        "One run of each search, in the order cold, no cache, warm.",
        f"Target: the cached search >= {TARGET:g}x faster than without the cache "
        f"(cold cache: {t_plain[0] / t_cold[0]:.1f}x wall, {t_plain[1] / t_cold[1]:.1f}x CPU "
        f"time), with the same best_params_ and best_score_: {'yes' if same else 'NO'}; "
        f"every candidate's mean score equal across the three runs: "
        f"{'yes' if (scores == scores[0]).all() else 'NO'}.",
        f"Warm rerun against the cold run: {t_cold[0] / t_warm[0]:.1f}x faster (wall). "
        f"Cache size on disk: {stored / 2**20:.1f} MiB.",
    ]
    return [Table("Feature cache under GridSearchCV (Pipeline of resnet18 and SVC)",
                  ["search", "wall s", "speed-up (wall)", "CPU s", "speed-up (CPU time)",
                   "best C", "best score"], rows, notes)]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run that checks it works")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch CPU threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings = Settings(device=args.device, quick=args.quick, threads=torch.get_num_threads())
    for table in run(settings):
        print(table.to_markdown())

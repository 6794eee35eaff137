"""Embedding images on a Dask cluster: what goes over the network, scheduler memory, throughput.

Three ways to run ``PretrainedFeatureTransformer("torchvision:resnet18")``
(random weights, 45 MB pickled) over a Dask array of uint8 images on the
same cluster:

- sktransfer: ``pft.transform(X)``, the model scattered once to each worker
  and referenced by the tasks (``sktransfer.scaling``);
- dask-ml's ``ParallelPostFit(pipe).transform(flat)``;
- a hand-written ``flat.map_blocks(lambda b: pipe.transform(b), ...)``,

where ``flat`` is ``X`` reshaped to ``(N, H*W*3)`` and ``pipe`` unflattens
it before ``pft``: dask-ml maps over 2-D arrays only.

Every repeat starts cold for everyone: sktransfer's workers free the models
they hold and a fresh copy of the estimator is shipped, so each contender
sends, deserializes and builds the model within the measured call. The
images are generated on the workers (``dask.array.random``), so the input
does not travel and the bytes counted are the model's and the graph's.

The scheduler and the workers run as separate processes (``dask scheduler``
and ``dask worker``), so that the scheduler's memory is its own: its peak
resident memory above what it held before the call is sampled every 10 ms
in the scheduler itself. The bytes sent to workers are the serialized
sizes of what the scheduler sends them: each task pickled on its own (as
it is dispatched) and, for sktransfer, the model scattered to each worker.
"""

import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import torch

from harness import Table

N_IMAGES = 20_000
N_PARTITIONS = 40
SIDE = 32


def _start_peak_sampler(dask_scheduler):
    """In the scheduler: sample its resident memory every 10 ms until stopped."""
    import psutil

    state = {"stop": False, "base": psutil.Process().memory_info().rss}
    state["peak"] = state["base"]

    def sample():
        process = psutil.Process()
        while not state["stop"]:
            state["peak"] = max(state["peak"], process.memory_info().rss)
            time.sleep(0.01)

    state["thread"] = threading.Thread(target=sample, daemon=True)
    state["thread"].start()
    dask_scheduler.sktransfer_benchmark_sampler = state
    return state["base"]


def _stop_peak_sampler(dask_scheduler):
    state = dask_scheduler.sktransfer_benchmark_sampler
    state["stop"] = True
    state["thread"].join()
    return state["peak"] - state["base"]


class _Cluster:
    """A scheduler and two one-thread workers as separate processes."""

    def __init__(self, threads):
        self.folder = tempfile.mkdtemp()
        self.file = os.path.join(self.folder, "scheduler.json")
        # The scheduler unpickles task graphs, the workers run tasks: both
        # import sktransfer and this file's functions as this process does.
        path = os.pathsep.join([os.path.dirname(os.path.abspath(__file__)), *sys.path])
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": path}
        cli = [sys.executable, "-m"]
        self.processes = [subprocess.Popen(
            cli + ["distributed.cli.dask_scheduler", "--scheduler-file", self.file,
                   "--port", "0", "--no-dashboard"], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        while not os.path.exists(self.file):
            time.sleep(0.1)
        self.processes.append(subprocess.Popen(
            cli + ["distributed.cli.dask_worker", "--scheduler-file", self.file,
                   "--nworkers", "2", "--nthreads", "1", "--no-dashboard"], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def client(self):
        import distributed

        client = distributed.Client(scheduler_file=self.file)
        client.wait_for_workers(2, timeout=120)
        return client

    def close(self):
        for process in reversed(self.processes):
            process.terminate()
            process.wait(timeout=30)


def _to_images(flat):
    return flat.reshape(len(flat), SIDE, SIDE, 3)


def _contenders(pft, X, client):
    import dask_ml.wrappers
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    from sktransfer.scaling import release_models

    # dask-ml maps over 2-D arrays only (its blocks keep X's chunks), so the
    # baselines get the images flattened and a pipeline that unflattens them.
    flat = X.reshape(len(X), -1)
    pipe = make_pipeline(FunctionTransformer(_to_images), pft)
    chunks = (X.chunks[0], (pft.n_features_out_,))

    def sktransfer_call():
        client.run(release_models)  # cold: the model is shipped and loaded again
        return pickle.loads(pickle.dumps(pft)).transform(X)

    def parallel_post_fit():
        return dask_ml.wrappers.ParallelPostFit(
            pipe, transform_meta=np.empty((0, pft.n_features_out_), np.float32)).transform(flat)

    def map_blocks():
        return flat.map_blocks(lambda block: pipe.transform(block), chunks=chunks,
                               dtype=np.float32)

    return {"ParallelPostFit (dask-ml)": parallel_post_fit, "map_blocks by hand": map_blocks,
            "sktransfer": sktransfer_call}


def _measure(client, make, shipped_bytes):
    from distributed.protocol.pickle import dumps

    client.run_on_scheduler(_start_peak_sampler)
    start = time.perf_counter()
    lazy = make()
    out = lazy.compute()
    wall = time.perf_counter() - start
    peak = client.run_on_scheduler(_stop_peak_sampler)
    graph = dict(lazy.__dask_graph__())
    # The scheduler serializes each task on its own when it sends it to a
    # worker: what a model embedded in the tasks costs on the network.
    to_workers = sum(len(dumps(task)) for task in graph.values()) + shipped_bytes(lazy)
    return out, {"wall": wall, "to_workers": to_workers, "peak": peak,
                 "graph": len(dumps(graph))}


def run(settings):
    import dask.array as da

    from sktransfer import PretrainedFeatureTransformer

    n = 2_000 if settings.quick else N_IMAGES
    repeats = 1 if settings.quick else 2
    cluster = _Cluster(settings.threads)
    try:
        client = cluster.client()
        client.run(torch.set_num_threads, settings.threads)
        X = da.random.default_rng(0).integers(0, 256, size=(n, SIDE, SIDE, 3), dtype=np.uint8,
                                              chunks=(n // N_PARTITIONS, SIDE, SIDE, 3))
        sample = X[:4].compute()
        pft = PretrainedFeatureTransformer("torchvision:resnet18", weights=None,
                                           image_size=SIDE, device="cpu",
                                           random_state=0).fit(sample)
        model_bytes = len(pickle.dumps(pft, protocol=5))
        model_mb = model_bytes / 1e6
        contenders = _contenders(pft, X, client)
        names = list(contenders)
        results = {name: [] for name in names}
        outputs = {}
        for r in range(repeats):
            for name in (names if r % 2 == 0 else names[::-1]):
                shipped = (lambda lazy: model_bytes * 2) if name == "sktransfer" else (
                    lambda lazy: 0)  # scattered once to each of the 2 workers
                outputs[name], figures = _measure(client, contenders[name], shipped)
                results[name].append(figures)
        reference = outputs["map_blocks by hand"]
        agree = max(float(np.abs(outputs[name] - reference).max()) for name in names)
    finally:
        client.close()
        cluster.close()

    rows = []
    for name in names:
        figures = results[name]
        best = min(f["wall"] for f in figures)
        rows.append([name, n / best, figures[0]["to_workers"] / 1e6,
                     np.median([f["peak"] for f in figures]) / 1e6,
                     figures[0]["graph"] / 1e6])
    base = {row[0]: row for row in rows}["ParallelPostFit (dask-ml)"]
    for row in rows:
        row.insert(2, row[1] / base[1])
    notes = [
        f"{n:,} uint8 images {SIDE}x{SIDE}x3 in {N_PARTITIONS} partitions, generated on the "
        f"workers; resnet18 (random weights) at {SIDE} px, {model_mb:.1f} MB pickled; a "
        f"scheduler and 2 workers of 1 thread as separate processes on this machine; "
        f"{repeats} cold repeat(s) per contender, interleaved; byte and memory figures are "
        f"medians, images/s the best repeat.",
        "MB to workers: the tasks pickled one by one, as the scheduler sends each to a "
        "worker (with the model, where a task embeds it), plus for sktransfer the model "
        "scattered once to each worker; scheduler peak: its resident memory above the "
        "level before the call, sampled every 10 ms; graph MB: the collection's whole task "
        "graph pickled as the client sends it (one copy of an object referenced by many "
        "tasks).",
        f"All three give the same features (largest difference {agree:.2g}).",
    ]
    return [Table(title=f"Dask: embedding {n:,} images on a 2-worker cluster",
                  columns=["contender", "images/s (best)", "throughput ratio",
                           "MB to workers", "scheduler peak MB", "graph MB"],
                  rows=rows, notes=notes)]

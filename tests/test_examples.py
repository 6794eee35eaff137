"""Every example script runs, in its quick mode, and prints its result.

The examples are what users run first and copy from, so each one runs here
the way a user runs it: as a script in a fresh Python process.
``SKTRANSFER_EXAMPLE_QUICK=1`` makes them smaller (fewer epochs and seeds),
not different.
"""

import concurrent.futures
import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# script -> pattern its output must match: the line that carries its result.
EXPECTED = {
    "audio_synthetic_sounds.py": r"layers 1 \+ 3 fused: accuracy [01]\.\d{2} \(chance 0\.33\)",
    "text_minilm_vs_tfidf.py": r"\n\s+4\s+0\.\d{3} ± 0\.\d{3}\s+0\.\d{3} ± 0\.\d{3}\n",
    "gridsearch_joblib.py": r"identical: True",
    "vgg16_frozen_binary.py": r"test accuracy \(china vs flower patches\): [01]\.\d{3}",
    "freeze_first_layers.py": r"none\s+0\.\d{3}\s+True\n\s+1\s+0\.\d{3}\s+False\n"
                              r"\s+backbone\s+0\.\d{3}\s+False",
    "parameter_transfer_l2sp.py": r"source weights \+ L2-SP 1\s+0\.\d{3} ±0\.\d{3}\s+\d+\.\d\d",
    "regression_negative_transfer.py": r"target unrelated: y = sin\(2x\).*\n(.*R\^2.*\n)?"
                                       r"\s+from scratch\s+-?\d+\.\d{3}",
    "feature_extraction_svm_rf.py": r"source features \+ random forest\s+test accuracy 0\.\d{3}",
    "multilayer_fusion_pca.py": r"conv1\+conv2\+conv3\s+112 fused features .* test accuracy "
                                r"0\.\d{3}",
    "demo.py": r"Gain over training from scratch.*\n.*verdict\n\s*scratch\s+0\.\d{3} ±0\.\d{3}\s+baseline",
    "hf_image_encoder_linear_probe.py": r"DINOv2 \(random\) cls\+avg\s+128\s+0\.\d{3}",
    "mlflow_pyfunc.py": r"pickle files in the logged model: 0\n"
                        r"MLflow pyfunc predictions equal the pipeline's: True",
    "lora_text_classifier.py": r"LoRA adapter\s+0\.\d{3}\s+\d+\.\d\s+1\d\d,\d{3}\n",
    "multilabel_image_tagging.py": r"fine-tuned, one 3-output net(\s+[01]\.\d{3}){4}\n"
                                   r"classes_ \[0 1 2\]",
    "export_and_serve.py": r"served without torch: labels equal the pipeline's: True; "
                           r"largest probability difference \d\.\de-0[4-9]",
}


def run_example(name, *args, timeout=600):
    env = dict(os.environ, SKTRANSFER_EXAMPLE_QUICK="1", MPLBACKEND="Agg",
               # One thread per process: the CI machine is shared.
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    return tmp_path_factory.mktemp("demo")


class _OnDemand(dict):
    """``started[name]`` run when first asked for: pytest-xdist's workers already
    run tests side by side, and each worker runs only some of the examples."""

    def __init__(self, submit):
        super().__init__()
        self._submit = submit

    def __missing__(self, name):
        self[name] = future = self._submit(name)
        return future


@pytest.fixture(scope="module")
def started(request, demo_out):
    """``started[name]``: the future of ``run_example(name)`` (``demo.py`` writes
    to ``demo_out``).

    Without pytest-xdist, every example selected in this session is started here,
    in the order its test runs, two at a time: each is one process on one thread,
    and the CI machine has two cores, so the second would otherwise stay idle
    while this process waits. Under pytest-xdist an example starts when its test
    runs. Each still runs alone in its own fresh process.
    """
    def submit(name):
        return pool.submit(run_example, name,
                           *(["--out", str(demo_out)] if name == "demo.py" else []))

    if os.environ.get("PYTEST_XDIST_WORKER"):
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        yield _OnDemand(submit)
    else:
        names = [item.callspec.params["name"] if hasattr(item, "callspec") else "demo.py"
                 for item in request.session.items
                 if getattr(item, "module", None) is request.module
                 and "started" in getattr(item, "fixturenames", ())]
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
        yield {name: submit(name) for name in dict.fromkeys(names)}
    pool.shutdown(wait=True, cancel_futures=True)


def test_every_example_is_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(EXPECTED) - {"demo.py"}))
def test_example_runs_and_prints_its_result(name, started):
    out = started[name].result()
    assert re.search(EXPECTED[name], out), f"{name} printed:\n{out}"


@pytest.mark.slow
def test_demo_writes_table_csv_and_plot(started, demo_out):
    """The reduced demo goes through the same code path as ``make demo``."""
    out = started["demo.py"].result()
    assert re.search(EXPECTED["demo.py"], out)
    with open(demo_out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    methods = {r["method"] for r in rows}
    transfer = {"scratch", "linear_probe", "fine_tune", "lp_ft", "l2sp", "source features + SVC"}
    # The new-scanner scenario's adaptation study: source-only as its baseline.
    adaptation = {"source_only", "coral (lambda=30)", "dann (lambda=0.03)"}
    assert methods == transfer | adaptation
    assert all(0 <= float(r["score"]) <= 1 for r in rows)
    # Every method appears in the printed table.
    for method in methods:
        assert method in out
    with open(demo_out / "summary.csv", newline="") as fh:
        summary = list(csv.DictReader(fh))
    # One row per transfer method in each of the two scenarios, and the adaptation study.
    assert len(summary) == 2 * len(transfer) + len(adaptation)
    assert {r["verdict"] for r in summary} <= {"baseline", "helps", "hurts",
                                               "no clear difference"}
    assert (demo_out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

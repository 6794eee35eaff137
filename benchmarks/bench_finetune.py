"""Fine-tuning speed: ``FineTunedClassifier`` against hand-written PyTorch and plain skorch.

Three comparisons, all on the same task: a torchvision resnet18 (random
weights, ``weights=None``: as fast as pretrained ones and no download) with a
new 10-class linear head, trained on uint8 images ``(N, H, W, 3)`` with
AdamW (the same learning rate, weight decay on kernels and weight matrices
only), cross-entropy, batch size 32, shuffled batches, constant learning rate
(``schedule=None``) and no validation or early stopping anywhere.

1. ``fit`` against the training loop a careful user writes by hand: a
   reproducible shuffle per epoch, the weights' own ``transforms()`` preset
   on each uint8 batch, ``model.train()``, ``zero_grad``, ``backward``,
   ``step``; at 64 px, and at 224 px (the size the weights were trained at),
   where the memory layout the network trains in decides most of the speed.
2. ``fit`` against the same fine-tuning written with plain skorch the way its
   documentation teaches: the whole array preprocessed to float32 once, up
   front, then ``NeuralNetClassifier`` with AdamW parameter groups, and
   skorch's ``Freezer`` callback for the frozen variant (64 px).
3. ``predict_proba`` against a hand-written inference loop (``eval()``,
   ``inference_mode()``, softmax), on the fitted weights (64 px).

Every contender builds its network from the same seed and draws its batches
from the same shuffling (see ``finetune_loops.py``), so they train the same
network on the same batches: the notes under the tables compare their
training losses to show it. Each timed call starts from the uint8 images and
builds the model (about 2% of the call), so one-time costs are counted alike
on every side.

sktransfer is also timed on the same images given as ``(N, C, H, W)``, and
at 224 px the hand-written loop also with contiguous (N, C, H, W) batches:
on the CPU, PyTorch's convolutions run in the memory layout of their input,
and which layout trains faster depends on the image size.
"""

import numpy as np
import torch

from finetune_loops import (BATCH_SIZE, FROZEN_GROUPS, LR, N_CLASSES, SEED, WEIGHT_DECAY,
                            check_skorch_decay_groups, hand_written_fit,
                            hand_written_predict_proba, resnet18_with_head, skorch_fit,
                            uses_channels_last, weights_preset)
from harness import Table, comparison_table, interleaved, ratio_summary, spread
from sktransfer import FineTunedClassifier
from sktransfer.backbones import load_backbone

NAME = "finetune"
FIT_TARGET = 1.10  # sktransfer's fit time over the hand-written loop's, at most
SKORCH_TARGET = 1.0  # sktransfer's fit time over plain skorch's, at most
PREDICT_TARGET = 0.95  # sktransfer's predict_proba throughput over the loop's, at least


def _sizes(quick):
    # Raw images larger than the crop and not square, so that resizing and
    # cropping do real work on every batch, as they do on photographs.
    if quick:
        return dict(n=64, epochs=1, repeats=3, n_predict=128, predict_repeats=3,
                    height=96, width=128, image_size=64)
    return dict(n=256, epochs=2, repeats=9, n_predict=512, predict_repeats=9,
                height=96, width=128, image_size=64)


def _sizes_224(quick):
    # Photograph-like frames (240x320, 4:3) resized to 256 and center-cropped
    # to 224, the preset's own sizes; fewer images, as each step costs ~12x.
    if quick:
        return dict(n=32, epochs=1, repeats=2, height=240, width=320, image_size=224)
    return dict(n=96, epochs=2, repeats=3, height=240, width=320, image_size=224)


# -- the benchmark --------------------------------------------------------------

def _sktransfer(sizes, device, freeze="none"):
    # random_state=None: the fit draws from torch's RNG as the caller seeded
    # it, in the order the other contenders draw (network, head, shuffling),
    # and builds its network on every fit as they do. (With an integer
    # random_state, random weights are built once per process and copied.)
    return FineTunedClassifier(
        "torchvision:resnet18", weights=None, image_size=sizes["image_size"], freeze=freeze,
        optimizer="adamw", lr=LR, weight_decay=WEIGHT_DECAY, schedule=None,
        max_epochs=sizes["epochs"], batch_size=BATCH_SIZE, device=str(device),
        precision="auto", random_state=None)


def sktransfer_fit(sizes, X, labels, device, freeze="none"):
    """Fine-tune with sktransfer, from the seed the other contenders use."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return _sktransfer(sizes, device, freeze).fit(X, labels)


def _check_frozen_groups(image_size):
    groups = [name for name, _ in
              load_backbone("torchvision:resnet18", None, image_size=image_size).param_groups]
    if tuple(groups[:len(FROZEN_GROUPS)]) != FROZEN_GROUPS:
        raise AssertionError(f"resnet18's first groups are {groups}, not {FROZEN_GROUPS}")


def _task(sizes):
    """The uint8 images (N, H, W, C), the same images as (N, C, H, W) (for the
    rows that show the effect of the memory layout), and labels with every
    class present."""
    n = sizes["n"]
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (n, sizes["height"], sizes["width"], 3), dtype=np.uint8)
    images_nchw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    labels = rng.permutation(np.arange(n) % N_CLASSES).astype(np.int64)
    return images, images_nchw, labels


def _preprocessing_gap(images, preset, image_size):
    """How far sktransfer's preprocessing is from the transforms() preset:
    sktransfer resizes uint8 images with torchvision's v2 kernels, the preset
    converts to float first and resizes with v1's, which round differently."""
    batch = torch.from_numpy(images[:BATCH_SIZE]).permute(0, 3, 1, 2)
    ours = load_backbone("torchvision:resnet18", None, image_size=image_size)
    return float((ours.preprocess(batch) - preset(batch)).abs().max())


def _losses_of(history):
    """The first batch's training loss and each epoch's, from a skorch history."""
    return history[0, "batches", 0, "train_loss"], list(history[:, "train_loss"])


def _warm_up(sizes, images, labels, preset, device):
    """One short untimed fit of each kind warms up allocators and kernels."""
    hand_written_fit(images[:BATCH_SIZE], labels[:BATCH_SIZE], preset, 1, device)
    _sktransfer(sizes, device).set_params(max_epochs=1).fit(images[:BATCH_SIZE],
                                                            labels[:BATCH_SIZE])


def _setup_note(sizes, preset):
    epochs = sizes["epochs"]
    return (f"{sizes['n']} uint8 images {sizes['height']}x{sizes['width']}x3 resized to "
            f"{preset.resize_size[0]} and center-cropped to {sizes['image_size']}, "
            f"{N_CLASSES} classes, {epochs} epoch{'s' if epochs > 1 else ''} per fit, "
            f"batch {BATCH_SIZE}, AdamW lr {LR:g}, weight decay {WEIGHT_DECAY:g} on "
            f"kernels and weight matrices only, constant learning rate, no validation, "
            f"{sizes['repeats']} interleaved repeats. Each timed fit starts from the uint8 "
            "images and builds the model. Time ratio = sktransfer's time over the "
            "baseline's within each repeat, so below 1 is faster; s/epoch and images/s "
            "are each contender's best call.")


def _gpu_note(device):
    if device.type != "cuda":
        return ""
    return (" On CUDA every contender runs under bf16 autocast. The hand-written loop "
            "preprocesses each uint8 batch on the GPU and converts model and batches to "
            "channels_last; plain skorch's model is channels_last; sktransfer preprocesses "
            "on the CPU and has no channels_last setting (batches from (N, H, W, C) arrays "
            "keep NHWC strides, which cuDNN convolutions follow).")


def run(settings):
    device = torch.device(settings.device)
    sizes = _sizes(settings.quick)
    tables = _fit_tables(settings, sizes, device)
    tables.append(_fit_224_table(settings, _sizes_224(settings.quick), device))
    tables.append(_predict_table(settings, sizes, device))
    return tables


def _fit_tables(settings, sizes, device):
    """fit at 64 px against the hand-written loop and against plain skorch."""
    on_cpu = device.type == "cpu"
    n, epochs = sizes["n"], sizes["epochs"]
    images, images_nchw, labels = _task(sizes)
    preset = weights_preset(sizes["image_size"])
    _check_frozen_groups(sizes["image_size"])
    check_skorch_decay_groups(device)
    n_frozen = len(FROZEN_GROUPS)
    prep_diff = _preprocessing_gap(images, preset, sizes["image_size"])

    # Each contender keeps the losses of its last call, to show that they
    # all train the same network on the same batches.
    losses = {}

    def timed(name, fit):
        def call():
            losses[name] = fit()
        return call

    def sktransfer_losses(X, freeze):
        return _losses_of(sktransfer_fit(sizes, X, labels, device, freeze).history_)

    def skorch_losses(frozen):
        return _losses_of(skorch_fit(images, labels, preset, epochs, device, frozen).history)

    free = {
        "hand-written": timed("hand-written", lambda: hand_written_fit(
            images, labels, preset, epochs, device)[1:]),
        "skorch": timed("skorch", lambda: skorch_losses(())),
        "sktransfer": timed("sktransfer", lambda: sktransfer_losses(images, "none")),
        "sktransfer nchw": timed("sktransfer nchw", lambda: sktransfer_losses(
            images_nchw, "none")),
    }
    frozen = {
        "skorch frozen": timed("skorch frozen", lambda: skorch_losses(FROZEN_GROUPS)),
        "sktransfer frozen": timed("sktransfer frozen", lambda: sktransfer_losses(
            images, n_frozen)),
        "sktransfer frozen nchw": timed("sktransfer frozen nchw", lambda: sktransfer_losses(
            images_nchw, n_frozen)),
    }
    _warm_up(sizes, images, labels, preset, device)
    wall, cpu = interleaved(free, sizes["repeats"], settings.device)
    wall_frozen, cpu_frozen = interleaved(frozen, sizes["repeats"], settings.device)
    wall.update(wall_frozen)
    cpu.update(cpu_frozen)
    cpu_or_none = cpu if on_cpu else None  # on accelerators the host mostly waits

    setup = _setup_note(sizes, preset)
    gpu = _gpu_note(device)
    fit_table = _time_table(
        f"fit: sktransfer against a hand-written PyTorch loop, resnet18, {settings.device}",
        [("hand-written loop", "hand-written", None),
         ("sktransfer", "sktransfer", "hand-written")],
        wall, cpu, n * epochs, epochs, on_cpu,
        notes=[setup + gpu,
               _verdict(wall, cpu_or_none, "sktransfer", "hand-written", FIT_TARGET),
               _agreement(losses, {"hand-written loop": "hand-written",
                                   "sktransfer": "sktransfer"}),
               f"The two preprocessings differ by at most {prep_diff:.3f} in normalized pixel "
               "values (resize rounding), hence the small gap in the first batch's loss."])

    freezer = f"Freezer({', '.join(FROZEN_GROUPS)})"
    skorch_table = _time_table(
        f"fit: sktransfer against plain skorch, resnet18, {settings.device}",
        [("plain skorch", "skorch", None),
         ("sktransfer, freeze='none'", "sktransfer", "skorch"),
         ("sktransfer, freeze='none', X as (N, C, H, W)", "sktransfer nchw", "skorch"),
         (f"plain skorch + {freezer}", "skorch frozen", None),
         (f"sktransfer, freeze={n_frozen}", "sktransfer frozen", "skorch frozen"),
         (f"sktransfer, freeze={n_frozen}, X as (N, C, H, W)", "sktransfer frozen nchw",
          "skorch frozen")],
        wall, cpu, n * epochs, epochs, on_cpu,
        notes=[setup + " Plain skorch's timed call includes preprocessing the whole array "
               "to float32 once, up front, as a skorch user does (4x the memory of the uint8 "
               "images); sktransfer preprocesses a batch at a time, every epoch. sktransfer "
               "gets the images as (N, H, W, C), like the other contenders, except in the rows "
               "marked (N, C, H, W), which get the same images transposed beforehand." + gpu,
               _verdict(wall, cpu_or_none, "sktransfer", "skorch", SKORCH_TARGET,
                        "freeze='none'") + " "
               + _verdict(wall, cpu_or_none, "sktransfer frozen", "skorch frozen",
                          SKORCH_TARGET, f"freeze={n_frozen}"),
               "Memory layout: skorch's DataLoader stacks samples into contiguous NCHW "
               "batches. On the CPU sktransfer trains batches smaller than 96x96 pixels "
               "contiguous too, whatever the layout of the array (a batch sliced from an "
               "(N, H, W, C) array and permuted has NHWC strides, which PyTorch's "
               "convolutions would otherwise follow); the (N, C, H, W) rows check that the "
               "array's layout makes no difference.",
               _agreement(losses, {"plain skorch": "skorch", "sktransfer": "sktransfer"}),
               f"With freezing, skorch's Freezer stops the gradients of the frozen layers but "
               "leaves their BatchNorm layers in training mode, so their running statistics "
               "still move; sktransfer keeps frozen BatchNorm layers in evaluation mode, which "
               "changes what the network computes from the first batch on (with these random "
               "weights, a lot). "
               + _agreement(losses, {f"plain skorch + {freezer}": "skorch frozen",
                                     f"sktransfer freeze={n_frozen}": "sktransfer frozen"},
                            sentence=False)])
    return [fit_table, skorch_table]


def _fit_224_table(settings, sizes, device):
    """fit at 224 px against the hand-written loop, in both memory layouts."""
    on_cpu = device.type == "cpu"
    n, epochs = sizes["n"], sizes["epochs"]
    images, images_nchw, labels = _task(sizes)
    preset = weights_preset(sizes["image_size"])
    prep_diff = _preprocessing_gap(images, preset, sizes["image_size"])
    losses = {}

    def hand(contiguous):
        def call():
            losses["hand contiguous" if contiguous else "hand"] = hand_written_fit(
                images, labels, preset, epochs, device, contiguous=contiguous)[1:]
        return call

    def ours(X, name):
        def call():
            losses[name] = _losses_of(sktransfer_fit(sizes, X, labels, device).history_)
        return call

    _warm_up(sizes, images, labels, preset, device)
    wall, cpu = interleaved({"hand": hand(False), "hand contiguous": hand(True),
                             "sktransfer": ours(images, "sktransfer"),
                             "sktransfer nchw": ours(images_nchw, "sktransfer nchw")},
                            sizes["repeats"], settings.device)
    layout = (" On the CPU, the hand-written loop's batches keep the NHWC strides of the "
              "(N, H, W, C) array through the preset, so its convolutions run channels-last; "
              "the row marked contiguous makes each batch contiguous (N, C, H, W) first, which "
              "shows what the layout alone costs. sktransfer trains batches of 96x96 pixels "
              "and more channels-last on the CPU, whatever the layout of the array "
              "(sktransfer.training.net.cpu_training_layout), and gets the images as "
              "(N, H, W, C) except in the row marked (N, C, H, W)." if on_cpu else "")
    return _time_table(
        f"fit at 224 px: sktransfer against a hand-written PyTorch loop, resnet18, "
        f"{settings.device}",
        [("hand-written loop", "hand", None),
         ("hand-written loop, contiguous (N, C, H, W) batches", "hand contiguous", "hand"),
         ("sktransfer", "sktransfer", "hand"),
         ("sktransfer, X as (N, C, H, W)", "sktransfer nchw", "hand")],
        wall, cpu, n * epochs, epochs, on_cpu,
        notes=[_setup_note(sizes, preset) + layout + _gpu_note(device),
               _verdict(wall, cpu if on_cpu else None, "sktransfer", "hand", FIT_TARGET),
               _agreement(losses, {"hand-written loop": "hand",
                                   "hand-written loop, contiguous": "hand contiguous",
                                   "sktransfer": "sktransfer",
                                   "sktransfer (N, C, H, W)": "sktransfer nchw"}),
               f"The two preprocessings differ by at most {prep_diff:.3f} in normalized pixel "
               "values (resize rounding)."])


def _predict_table(settings, sizes, device):
    rng = np.random.RandomState(1)
    n = sizes["n_predict"]
    images = rng.randint(0, 256, (n, sizes["height"], sizes["width"], 3), dtype=np.uint8)
    train = images[:sizes["n"]]
    labels = np.arange(len(train)) % N_CLASSES
    clf = sktransfer_fit(dict(sizes, epochs=1), train, labels, device)

    # The reference: the same fitted weights in a plain resnet18 with a new fc.
    model = resnet18_with_head(N_CLASSES)
    state = clf.backbone_.module.state_dict()
    state.update({f"fc.{k}": v for k, v in clf.head_[-1].state_dict().items()})
    model.load_state_dict(state)
    model = model.to(device).eval()
    if uses_channels_last(device):
        model = model.to(memory_format=torch.channels_last)
    preset = weights_preset(sizes["image_size"])

    def reference():
        return hand_written_predict_proba(model, preset, images, device)

    def sktransfer():
        return clf.predict_proba(images)

    # One untimed call each warms up, and shows both compute the same probabilities.
    expected, got = reference(), sktransfer()
    diff = float(np.abs(got - expected).max())
    wall, cpu = interleaved({"hand-written loop": reference, "sktransfer": sktransfer},
                            sizes["predict_repeats"], settings.device)
    median = ratio_summary(wall["hand-written loop"], wall["sktransfer"])[0]
    verdict = "meets" if median >= PREDICT_TARGET else "misses"
    where = (" On CUDA both run under bf16 autocast and preprocess each uint8 batch on the "
             "GPU; the hand-written loop converts model and batches to channels_last, "
             "sktransfer has no channels_last setting (its batches from (N, H, W, C) arrays "
             "keep NHWC strides, which cuDNN convolutions follow)." if device.type == "cuda"
             else "")
    return comparison_table(
        f"predict_proba: sktransfer against a hand-written inference loop, resnet18, "
        f"{settings.device}", "images", n, wall, cpu, settings.device,
        notes=[f"{n} uint8 images {sizes['height']}x{sizes['width']}x3 resized to "
               f"{preset.resize_size[0]} and center-cropped to {sizes['image_size']}, batch "
               f"{BATCH_SIZE}, the same fitted weights on both sides, {sizes['predict_repeats']} "
               "interleaved repeats. Ratio = sktransfer's throughput over the hand-written "
               f"loop's within each repeat, so above 1 is faster; target >= {PREDICT_TARGET} "
               f"(the median {verdict} it).{where}",
               f"Probabilities agree: max |difference| = {diff:.1e}."])


def _time_table(title, rows, wall, cpu, n_images, epochs, on_cpu, notes):
    """A fit-time table: ``rows`` are ``(label, contender, baseline or None)``;
    a row with a baseline gives its time over the baseline's (below 1 is faster).
    CPU-time ratios are left out on accelerators, where the host mostly waits."""
    columns = ["contender", "s/epoch (best)", "images/s (best)", "time ratio (median)",
               "time ratio range"]
    if on_cpu:
        columns += ["CPU-time ratio (median)", "CPU-time ratio range"]
    table_rows = []
    for label, name, baseline in rows:
        best = min(wall[name])  # the call other work disturbed least
        row = [label, best / epochs, n_images / best]
        if baseline is None:
            row += [1.0, "-"] + ([1.0, "-"] if on_cpu else [])
        else:
            ratios = ratio_summary(wall[name], wall[baseline])
            row += [ratios[0], spread(ratios)]
            if on_cpu:
                ratios = ratio_summary(cpu[name], cpu[baseline])
                row += [ratios[0], spread(ratios)]
        table_rows.append(row)
    return Table(title=title, columns=columns, rows=table_rows, notes=notes)


def _verdict(wall, cpu, name, baseline, target, what=None):
    """Whether the median time ratio meets ``target`` (at most), in wall and,
    on the CPU, in CPU seconds."""
    prefix = f"{what}: " if what else ""
    parts = []
    for kind, times in (("wall-time", wall), ("CPU-time", cpu)):
        if times is None:
            continue
        median = ratio_summary(times[name], times[baseline])[0]
        parts.append(f"the {kind} median {median:.3f} "
                     f"{'meets' if median <= target else 'misses'} it")
    return f"{prefix}target time ratio <= {target:.2f}; " + ", ".join(parts) + "."


def _agreement(losses, shown, sentence=True):
    """The first-batch and per-epoch training losses of the contenders in
    ``shown`` (label -> name). Equal first-batch losses mean equal starting
    weights and first batch; afterwards tiny numerical differences (the
    resize implementations' rounding, the memory layout) grow as training
    goes, as they do between any two runs that are not bit-identical."""
    first = ", ".join(f"{label} {losses[name][0]:.4f}" for label, name in shown.items())
    epochs = "; ".join(f"{label} " + ", ".join(f"{v:.4f}" for v in losses[name][1])
                       for label, name in shown.items())
    text = f"Training loss of the first batch: {first}. Per epoch: {epochs}."
    return ("Same network, same batches. " + text) if sentence else text

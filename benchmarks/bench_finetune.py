"""Fine-tuning speed: ``FineTunedClassifier`` against hand-written PyTorch and plain skorch.

Three comparisons, all on the same task: a torchvision resnet18 (random
weights, ``weights=None``: as fast as pretrained ones and no download) with a
new 10-class linear head, trained on uint8 images ``(N, H, W, 3)`` with
AdamW (the same learning rate, weight decay on kernels and weight matrices
only), cross-entropy, batch size 32, shuffled batches, constant learning rate
(``schedule=None``) and no validation or early stopping anywhere.

1. ``fit`` against the training loop a careful user writes by hand: shuffled
   index batches from a ``DataLoader``, the weights' own ``transforms()``
   preset on each uint8 batch, ``model.train()``, ``zero_grad``, ``backward``,
   ``step``.
2. ``fit`` against the same fine-tuning written with plain skorch the way its
   documentation teaches: the whole array preprocessed to float32 once, up
   front, then ``NeuralNetClassifier`` with AdamW parameter groups, and
   skorch's ``Freezer`` callback for the frozen variant.
3. ``predict_proba`` against a hand-written inference loop (``eval()``,
   ``inference_mode()``, softmax), on the fitted weights.

Every contender builds its network from the same seed and draws its batches
from the same shuffling, so they train the same network on the same batches:
the notes under the tables compare their training losses to show it. Each
timed call starts from the uint8 images and builds the model (about 2% of
the call), so one-time costs are counted alike on every side.

sktransfer is also timed on the same images given as ``(N, C, H, W)``: the
layout of the array decides the memory layout the network runs in, and on
the CPU that alone changes the speed by several percent.
"""

import contextlib

import numpy as np
import torch
import torchvision
from skorch import NeuralNetClassifier
from skorch.callbacks import Freezer
from torch import nn

from harness import Table, comparison_table, interleaved, ratio_summary, spread
from sktransfer import FineTunedClassifier
from sktransfer.backbones import load_backbone

NAME = "finetune"
FIT_TARGET = 1.10  # sktransfer's fit time over the hand-written loop's, at most
SKORCH_TARGET = 1.0  # sktransfer's fit time over plain skorch's, at most
PREDICT_TARGET = 0.95  # sktransfer's predict_proba throughput over the loop's, at least

N_CLASSES = 10
BATCH_SIZE = 32
LR = 1e-3
WEIGHT_DECAY = 0.01
SEED = 0
# The first four of resnet18's parameter groups as sktransfer orders them
# (input first); freeze=4 keeps them frozen, and plain skorch freezes the same
# parameters with Freezer patterns.
FROZEN_GROUPS = ("conv1", "bn1", "layer1", "layer2")


def _sizes(quick):
    # Raw images larger than the crop and not square, so that resizing and
    # cropping do real work on every batch, as they do on photographs.
    if quick:
        return dict(n=64, epochs=1, repeats=3, n_predict=128, predict_repeats=3,
                    height=96, width=128, image_size=64)
    return dict(n=256, epochs=2, repeats=9, n_predict=512, predict_repeats=9,
                height=96, width=128, image_size=64)


# -- the contenders' shared parts ---------------------------------------------

def _resnet18(n_classes):
    """resnet18 with a new head, drawing its initial weights in the order
    sktransfer does (the network, then the head), so one seed gives every
    contender the same starting weights."""
    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Linear(model.fc.in_features, n_classes)
    return model


def _preset(image_size):
    """The weights' own preprocessing (resize, center crop, scale, normalize)
    at ``image_size``, keeping the preset's resize/crop ratio."""
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    default = weights.transforms()
    resize = round(image_size * default.resize_size[0] / default.crop_size[0])
    return weights.transforms(crop_size=image_size, resize_size=resize)


def _autocast(device):
    """bf16 autocast on CUDA (what ``precision="auto"`` picks there), fp32 elsewhere."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def _channels_last(device):
    # On CUDA a careful loop converts model and batches to NHWC, which lets
    # cuDNN use tensor-core kernels without transposes. On the CPU nobody
    # converts: the layout follows the input array (see the notes in run).
    return device.type == "cuda"


def _uint8_batch(images, idx, device):
    # Copy the uint8 batch (4x smaller than float) and preprocess on the device.
    return torch.from_numpy(images[idx]).permute(0, 3, 1, 2).to(device, non_blocking=True)


# -- 1. the hand-written training loop ------------------------------------------

def hand_written_fit(images, labels, preset, epochs, device):
    """Fine-tune the way a careful hand-written PyTorch loop does.

    Returns the model, the loss of the first batch and the mean training
    loss of each epoch.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = _resnet18(N_CLASSES).to(device)
        channels_last = _channels_last(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        # Weight decay on kernels and weight matrices only, as sktransfer does.
        decay = [p for p in model.parameters() if p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.ndim < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=LR)
        criterion = nn.CrossEntropyLoss()
        targets = torch.from_numpy(labels)
        # A DataLoader over the indices gives shuffled index batches, and the
        # images are sliced a batch at a time; it draws from torch's RNG as
        # skorch's shuffling DataLoader does, hence the same batches.
        batches = torch.utils.data.DataLoader(range(len(images)), batch_size=BATCH_SIZE,
                                              shuffle=True)
        first, losses = None, []
        model.train()
        for _ in range(epochs):
            total = torch.zeros((), device=device)
            for idx in batches:
                idx = idx.numpy()
                x = preset(_uint8_batch(images, idx, device))
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = targets[idx].to(device, non_blocking=True)
                with _autocast(device):
                    logits = model(x)
                loss = criterion(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                # Kept on the device: no synchronization per batch.
                first = loss.detach() if first is None else first
                total += loss.detach() * len(idx)
            losses.append(total.item() / len(images))
    return model, first.item(), losses


# -- 2. plain skorch ---------------------------------------------------------------

class _AutocastNet(NeuralNetClassifier):
    """``NeuralNetClassifier`` with bf16 autocast, used on CUDA only.

    skorch has no mixed-precision switch of its own (its docs point to the
    ``accelerate`` package); overriding ``infer`` is its documented way to
    change a step, and gives it the same autocast as the other contenders.
    """

    def infer(self, x, **fit_params):
        with _autocast(torch.device(self.device)):
            return super().infer(x, **fit_params)

    def get_loss(self, y_pred, y_true, *args, **kwargs):
        return super().get_loss(y_pred.float(), y_true, *args, **kwargs)


def _skorch_net(epochs, device, frozen=()):
    """``NeuralNetClassifier`` set up for the task: AdamW with the same
    weight-decay policy, shuffled batches, no validation split."""
    net_class = _AutocastNet if device.type == "cuda" else NeuralNetClassifier
    module = _resnet18(N_CLASSES)
    if _channels_last(device):
        module = module.to(memory_format=torch.channels_last)
    return net_class(
        module, criterion=nn.CrossEntropyLoss, optimizer=torch.optim.AdamW, lr=LR,
        optimizer__weight_decay=WEIGHT_DECAY,
        # No decay on biases and BatchNorm parameters, picked by name as
        # skorch's parameter groups take them.
        optimizer__param_groups=[(pattern, {"weight_decay": 0.0})
                                 for pattern in ("*bn*", "*downsample.1.*", "*.bias")],
        batch_size=BATCH_SIZE, max_epochs=epochs, train_split=None,
        iterator_train__shuffle=True,
        callbacks=[Freezer([f"{name}.*" for name in frozen])] if frozen else None,
        device=str(device), verbose=0,
    )


def skorch_fit(images, labels, preset, epochs, device, frozen=()):
    """Fine-tune with plain skorch as its documentation teaches.

    The timed job includes preprocessing the whole uint8 array up front,
    since that is how a skorch user gets from the same images to its input.
    Returns the fitted net.
    """
    # The whole data set as one float32 array: 4x the memory of the uint8
    # images (sktransfer preprocesses a batch at a time instead).
    X = preset(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return _skorch_net(epochs, device, frozen).fit(X, labels)


def _check_skorch_decay_groups(device):
    """The skorch parameter groups decay exactly the parameters sktransfer
    decays (ndim >= 2), so both run the same optimizer."""
    net = _skorch_net(1, device).initialize()
    for group in net.optimizer_.param_groups:
        decays = {p.ndim >= 2 for p in group["params"]}
        if decays != {group["weight_decay"] > 0}:
            raise AssertionError("plain skorch's weight-decay groups differ from sktransfer's")


# -- 3. the hand-written inference loop ------------------------------------------

def hand_written_predict_proba(model, preset, images, device):
    """Class probabilities the way a careful hand-written inference loop gets them."""
    out = np.empty((len(images), N_CLASSES), dtype=np.float32)
    channels_last = _channels_last(device)
    model.eval()
    with torch.inference_mode(), _autocast(device):
        for start in range(0, len(images), BATCH_SIZE):
            idx = slice(start, start + BATCH_SIZE)
            x = preset(_uint8_batch(images, idx, device))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out[idx] = model(x).float().softmax(1).cpu().numpy()
    return out


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


def run(settings):
    sizes = _sizes(settings.quick)
    device = torch.device(settings.device)
    on_cpu = device.type == "cpu"
    n, epochs = sizes["n"], sizes["epochs"]
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (n, sizes["height"], sizes["width"], 3), dtype=np.uint8)
    # The same images as (N, C, H, W), for the rows that show the effect of
    # the memory layout (see the notes).
    images_nchw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    labels = rng.permutation(np.arange(n) % N_CLASSES).astype(np.int64)  # every class present
    preset = _preset(sizes["image_size"])
    _check_frozen_groups(sizes["image_size"])
    _check_skorch_decay_groups(device)
    n_frozen = len(FROZEN_GROUPS)
    # sktransfer resizes uint8 images with torchvision's v2 kernels, the
    # transforms() preset with v1's, which round differently.
    batch = torch.from_numpy(images[:BATCH_SIZE]).permute(0, 3, 1, 2)
    ours = load_backbone("torchvision:resnet18", None, image_size=sizes["image_size"])
    prep_diff = float((ours.preprocess(batch) - preset(batch)).abs().max())

    # Each contender keeps the losses of its last call, to show that they
    # all train the same network on the same batches.
    losses = {}

    def timed(name, fit):
        def call():
            losses[name] = fit()
        return call

    def sktransfer_losses(X, freeze):
        clf = sktransfer_fit(sizes, X, labels, device, freeze)
        return (clf.history_[0, "batches", 0, "train_loss"],
                list(clf.history_[:, "train_loss"]))

    def skorch_losses(frozen):
        net = skorch_fit(images, labels, preset, epochs, device, frozen)
        return net.history[0, "batches", 0, "train_loss"], list(net.history[:, "train_loss"])

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
    # One short untimed fit of each kind warms up allocators and kernels.
    hand_written_fit(images[:BATCH_SIZE], labels[:BATCH_SIZE], preset, 1, device)
    _sktransfer(sizes, device).set_params(max_epochs=1).fit(images[:BATCH_SIZE],
                                                            labels[:BATCH_SIZE])

    wall, cpu = interleaved(free, sizes["repeats"], settings.device)
    wall_frozen, cpu_frozen = interleaved(frozen, sizes["repeats"], settings.device)
    wall.update(wall_frozen)
    cpu.update(cpu_frozen)
    cpu_or_none = cpu if on_cpu else None  # on accelerators the host mostly waits

    setup = (f"{n} uint8 images {sizes['height']}x{sizes['width']}x3 resized to "
             f"{preset.resize_size[0]} and center-cropped to {sizes['image_size']}, "
             f"{N_CLASSES} classes, {epochs} epoch{'s' if epochs > 1 else ''} per fit, "
             f"batch {BATCH_SIZE}, AdamW lr {LR:g}, weight decay {WEIGHT_DECAY:g} on "
             f"kernels and weight matrices only, constant learning rate, no validation, "
             f"{sizes['repeats']} interleaved repeats. Each timed fit starts from the uint8 "
             "images and builds the model. Time ratio = sktransfer's time over the "
             "baseline's within each repeat, so below 1 is faster; s/epoch and images/s "
             "are each contender's best call.")
    gpu = ("" if on_cpu else
           " On CUDA every contender runs under bf16 autocast. The hand-written loop "
           "preprocesses each uint8 batch on the GPU and converts model and batches to "
           "channels_last; plain skorch's model is channels_last; sktransfer preprocesses "
           "on the CPU and has no channels_last setting (batches from (N, H, W, C) arrays "
           "keep NHWC strides, which cuDNN convolutions follow).")

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
               "Memory layout: a batch sliced from an (N, H, W, C) array and permuted keeps "
               "NHWC strides through the preprocessing, and PyTorch's convolutions then run "
               "channels-last; skorch's DataLoader stacks samples into contiguous NCHW "
               "batches, and so does sktransfer for (N, C, H, W) arrays. The (N, C, H, W) rows "
               "show what the layout alone costs or saves.",
               _agreement(losses, {"plain skorch": "skorch", "sktransfer": "sktransfer"}),
               f"With freezing, skorch's Freezer stops the gradients of the frozen layers but "
               "leaves their BatchNorm layers in training mode, so their running statistics "
               "still move; sktransfer keeps frozen BatchNorm layers in evaluation mode, which "
               "changes what the network computes from the first batch on (with these random "
               "weights, a lot). "
               + _agreement(losses, {f"plain skorch + {freezer}": "skorch frozen",
                                     f"sktransfer freeze={n_frozen}": "sktransfer frozen"},
                            sentence=False)])

    return [fit_table, skorch_table, _predict_table(settings, sizes, device)]


def _predict_table(settings, sizes, device):
    rng = np.random.RandomState(1)
    n = sizes["n_predict"]
    images = rng.randint(0, 256, (n, sizes["height"], sizes["width"], 3), dtype=np.uint8)
    train = images[:sizes["n"]]
    labels = np.arange(len(train)) % N_CLASSES
    clf = sktransfer_fit(dict(sizes, epochs=1), train, labels, device)

    # The reference: the same fitted weights in a plain resnet18 with a new fc.
    model = _resnet18(N_CLASSES)
    state = clf.backbone_.module.state_dict()
    state.update({f"fc.{k}": v for k, v in clf.head_[-1].state_dict().items()})
    model.load_state_dict(state)
    model = model.to(device).eval()
    if _channels_last(device):
        model = model.to(memory_format=torch.channels_last)
    preset = _preset(sizes["image_size"])

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

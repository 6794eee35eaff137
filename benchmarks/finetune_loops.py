"""The fine-tuning benchmark's contenders other than sktransfer (see ``bench_finetune.py``).

A hand-written PyTorch training loop, plain skorch as its documentation
teaches, and a hand-written inference loop, all set up for the same task:
a torchvision resnet18 with a new 10-class linear head, AdamW with weight
decay on kernels and weight matrices only, cross-entropy, batch size 32.

Every contender draws from torch's RNG in the order sktransfer does: the
network, then the head, then one seed for the shuffling, from which epoch
``e`` shuffles with ``torch.randperm(n)`` under a generator seeded with
``seed + e`` (sktransfer keeps its shuffling apart from the global RNG, so
that ``num_workers`` does not change the model). One seed therefore gives
every contender the same starting weights and the same batches.
"""

import contextlib

import numpy as np
import torch
import torchvision
from skorch import NeuralNetClassifier
from skorch.callbacks import Freezer
from torch import nn

N_CLASSES = 10
BATCH_SIZE = 32
LR = 1e-3
WEIGHT_DECAY = 0.01
SEED = 0
# The first four of resnet18's parameter groups as sktransfer orders them
# (input first); freeze=4 keeps them frozen, and plain skorch freezes the same
# parameters with Freezer patterns.
FROZEN_GROUPS = ("conv1", "bn1", "layer1", "layer2")


# -- the contenders' shared parts ---------------------------------------------

def resnet18_with_head(n_classes):
    """resnet18 with a new head, drawing its initial weights in the order
    sktransfer does (the network, then the head), so one seed gives every
    contender the same starting weights."""
    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Linear(model.fc.in_features, n_classes)
    return model


def weights_preset(image_size):
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


def uses_channels_last(device):
    # On CUDA a careful loop converts model and batches to NHWC, which lets
    # cuDNN use tensor-core kernels without transposes. On the CPU nobody
    # converts: the layout follows the input array (see the notes in run).
    return device.type == "cuda"


def _shuffle_seed():
    """The seed of the shuffling, drawn from torch's RNG after the model's
    weights, where sktransfer draws its own."""
    return int(torch.randint(0, 2**31 - 1, ()).item())


def _permutation(n, seed, epoch):
    """The order of the ``n`` samples in ``epoch``: a permutation drawn from
    its own generator, so that every epoch reshuffles reproducibly."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))


class _EpochShuffle(torch.utils.data.Sampler):
    """A sampler giving plain skorch's DataLoader the same per-epoch orders.

    skorch builds a new DataLoader every epoch from the same keyword
    arguments, so the sampler counts the epochs itself.
    """

    def __init__(self, n, seed):
        self.n, self.seed, self.epoch = n, seed, 0

    def __len__(self):
        return self.n

    def __iter__(self):
        order = _permutation(self.n, self.seed, self.epoch)
        self.epoch += 1
        return iter(order.tolist())


def _uint8_batch(images, idx, device):
    # Copy the uint8 batch (4x smaller than float) and preprocess on the device.
    return torch.from_numpy(images[idx]).permute(0, 3, 1, 2).to(device, non_blocking=True)


# -- 1. the hand-written training loop ------------------------------------------

def hand_written_fit(images, labels, preset, epochs, device, contiguous=False):
    """Fine-tune the way a careful hand-written PyTorch loop does.

    ``contiguous=True`` makes every batch contiguous (N, C, H, W) before the
    forward pass, in place of the layout the preprocessing leaves (NHWC
    strides from an (N, H, W, C) array on the CPU, channels_last on CUDA):
    what the memory layout alone costs or saves.

    Returns the model, the loss of the first batch and the mean training
    loss of each epoch.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = resnet18_with_head(N_CLASSES).to(device)
        channels_last = uses_channels_last(device) and not contiguous
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        # Weight decay on kernels and weight matrices only, as sktransfer does.
        decay = [p for p in model.parameters() if p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.ndim < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=LR)
        criterion = nn.CrossEntropyLoss()
        targets = torch.from_numpy(labels)
        # A reproducible shuffle per epoch; the images are sliced a batch at a time.
        seed = _shuffle_seed()
        first, losses = None, []
        model.train()
        for epoch in range(epochs):
            total = torch.zeros((), device=device)
            for idx in _permutation(len(images), seed, epoch).split(BATCH_SIZE):
                idx = idx.numpy()
                x = preset(_uint8_batch(images, idx, device))
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                elif contiguous:
                    x = x.contiguous()
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


def _skorch_net(n, epochs, device, frozen=()):
    """``NeuralNetClassifier`` set up for the task on ``n`` samples: AdamW
    with the same weight-decay policy, shuffled batches, no validation split."""
    net_class = _AutocastNet if device.type == "cuda" else NeuralNetClassifier
    module = resnet18_with_head(N_CLASSES)
    if uses_channels_last(device):
        module = module.to(memory_format=torch.channels_last)
    sampler = _EpochShuffle(n, _shuffle_seed())
    return net_class(
        module, criterion=nn.CrossEntropyLoss, optimizer=torch.optim.AdamW, lr=LR,
        optimizer__weight_decay=WEIGHT_DECAY,
        # No decay on biases and BatchNorm parameters, picked by name as
        # skorch's parameter groups take them.
        optimizer__param_groups=[(pattern, {"weight_decay": 0.0})
                                 for pattern in ("*bn*", "*downsample.1.*", "*.bias")],
        batch_size=BATCH_SIZE, max_epochs=epochs, train_split=None,
        iterator_train__sampler=sampler,
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
        return _skorch_net(len(X), epochs, device, frozen).fit(X, labels)


def check_skorch_decay_groups(device):
    """The skorch parameter groups decay exactly the parameters sktransfer
    decays (ndim >= 2), so both run the same optimizer."""
    net = _skorch_net(1, 1, device).initialize()
    for group in net.optimizer_.param_groups:
        decays = {p.ndim >= 2 for p in group["params"]}
        if decays != {group["weight_decay"] > 0}:
            raise AssertionError("plain skorch's weight-decay groups differ from sktransfer's")


# -- 3. the hand-written inference loop ------------------------------------------

def hand_written_predict_proba(model, preset, images, device):
    """Class probabilities the way a careful hand-written inference loop gets them."""
    out = np.empty((len(images), N_CLASSES), dtype=np.float32)
    channels_last = uses_channels_last(device)
    model.eval()
    with torch.inference_mode(), _autocast(device):
        for start in range(0, len(images), BATCH_SIZE):
            idx = slice(start, start + BATCH_SIZE)
            x = preset(_uint8_batch(images, idx, device))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out[idx] = model(x).float().softmax(1).cpu().numpy()
    return out


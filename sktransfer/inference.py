"""The one inference loop: embeddings (``transform``) and predictions.

Batches are drawn from a :class:`~sktransfer.inputs.Samples` source,
preprocessed, run through an engine (:mod:`sktransfer.engine`: the fitted
network, resident on its device, in the estimator's runtime) and written
into one preallocated float32 array, so memory is the output plus a batch.
The engine is read-only, so many threads can run this loop on one at once.
"""

import numpy as np
import torch
from tqdm.auto import tqdm

from ._utils.device import to_device
from .inputs import Collate


def batch_order(samples, preprocess, batch_size):
    """Index batches; text and sound go longest-first to keep padding short.

    Text is sorted by token count, clips by length. A preprocess whose
    padding changes a clip's result (``pads_exactly`` False: waveform models
    without an attention mask) gets batches of equal-length clips only.

    Examples
    --------
    >>> from sktransfer.inputs import as_samples
    >>> import numpy as np
    >>> [b.tolist() for b in batch_order(as_samples(np.zeros((5, 2)), "tensor"), None, 2)]
    [[0, 1], [2, 3], [4]]
    """
    order = np.arange(len(samples))
    # One batch pads to its longest sample whatever the order: counting
    # tokens (a second tokenization) would only slow a small call down.
    if samples.kind == "text" and len(samples) > batch_size:
        lengths = getattr(preprocess, "lengths", None)
        sizes = lengths(samples.data) if lengths else [len(s) for s in samples.data]
        order = np.argsort(-np.asarray(sizes), kind="stable")
    if samples.kind.startswith("audio_"):
        sizes = samples.lengths()
        order = np.argsort(-sizes, kind="stable")
        if not getattr(preprocess, "pads_exactly", True):
            return _equal_length_batches(order, sizes, batch_size)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _equal_length_batches(order, sizes, batch_size):
    """Batches of ``order`` (sorted by size) that never mix two sizes."""
    batches, current = [], []
    for i in order:
        if current and (len(current) == batch_size or sizes[i] != sizes[current[0]]):
            batches.append(np.asarray(current))
            current = []
        current.append(i)
    return batches + [np.asarray(current)]


def predict_batches(engine, samples, preprocess, *, batch_size, num_workers=0, verbose=False,
                    desc="predicting"):
    """Run ``engine`` over ``samples`` a batch at a time.

    Parameters
    ----------
    engine : sktransfer.engine.runtimes.Engine or OnnxEngine
        Takes a preprocessed batch on ``engine.device`` and returns its
        ``(B, F)`` results.
    samples : Samples
        Raw samples, fetched a batch at a time.
    preprocess : callable
        The backbone's batch preprocessing.
    batch_size : int
    num_workers : int, default=0
        DataLoader worker processes that fetch and preprocess batches; with
        0 this thread does it (no DataLoader: a small call pays nothing for
        one).
    verbose : bool, default=False
        Show a progress bar labelled ``desc``.

    Returns
    -------
    ndarray of shape (n_samples, n_outputs), float32

    Examples
    --------
    >>> from sktransfer.inputs import as_samples
    >>> from sktransfer.backbones.preprocess import TensorPreprocess
    >>> from sktransfer.engine.module import InferenceModule
    >>> from sktransfer.engine.runtimes import Engine
    >>> engine = Engine(InferenceModule(torch.nn.Identity()), torch.device("cpu"))
    >>> samples = as_samples(np.ones((3, 2), dtype=np.float32), "tensor")
    >>> predict_batches(engine, samples, TensorPreprocess(), batch_size=2)
    array([[1., 1.],
           [1., 1.],
           [1., 1.]], dtype=float32)
    """
    device = engine.device
    batches = batch_order(samples, preprocess, batch_size)
    # Same-size image arrays travel to an accelerator as uint8 (a quarter of
    # the bytes of float32) and are resized and normalized there rather than
    # on a CPU core, where preprocessing runs otherwise.
    on_device = device.type != "cpu" and samples.kind in ("nchw", "nhwc")
    collate = Collate(None if on_device else preprocess)
    out = None
    for idx, inputs in zip(batches, _batches(samples, batches, collate, num_workers, device,
                                             verbose, desc)):
        inputs = to_device(inputs, device)
        if on_device:
            inputs = preprocess(inputs)
        result = engine(inputs).reshape(len(idx), -1).float().cpu().numpy()
        if out is None:
            out = np.empty((len(samples), result.shape[1]), dtype=np.float32)
        out[idx] = result
    return out


def _batches(samples, batches, collate, num_workers, device, verbose, desc):
    """Collated batches in the order of ``batches``, fetched here or by loader workers."""
    if num_workers:
        loader = torch.utils.data.DataLoader(
            samples, batch_sampler=batches, collate_fn=collate, num_workers=num_workers,
            pin_memory=device.type == "cuda",
            # The loader draws its workers' base seed from this generator, not
            # from torch's global RNG, which a prediction must leave alone.
            generator=torch.Generator())
        batches_out = iter(loader)
    else:
        batches_out = (_pinned(collate(samples.__getitems__(idx)), device) for idx in batches)
    if verbose:
        batches_out = tqdm(batches_out, total=len(batches), desc=desc, unit="batch")
    return batches_out


def _pinned(inputs, device):
    """Inputs in page-locked memory when bound for CUDA, so the copy runs asynchronously."""
    if device.type != "cuda":
        return inputs
    if isinstance(inputs, dict):
        return {k: v.pin_memory() for k, v in inputs.items()}
    return inputs.pin_memory()

"""The one inference loop: embeddings (``transform``) and predictions.

Batches are drawn from a :class:`~sktransfer.inputs.Samples` source, run
through the module under ``torch.inference_mode`` and autocast, and written
into one preallocated float32 array, so memory is the output plus a batch.
"""

import numpy as np
import torch
from tqdm.auto import tqdm

from ._device import autocast, resolve_device, to_device
from .inputs import Collate


def batch_order(samples, preprocess, batch_size):
    """Index batches; text goes longest-first by token count to keep padding short.

    Examples
    --------
    >>> from sktransfer.inputs import as_samples
    >>> import numpy as np
    >>> [b.tolist() for b in batch_order(as_samples(np.zeros((5, 2)), "tensor"), None, 2)]
    [[0, 1], [2, 3], [4]]
    """
    order = np.arange(len(samples))
    if samples.kind == "text":
        lengths = getattr(preprocess, "lengths", None)
        sizes = lengths(samples.data) if lengths else [len(s) for s in samples.data]
        order = np.argsort(-np.asarray(sizes), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def predict_batches(module, samples, preprocess, *, batch_size, device="auto", amp_dtype=None,
                    num_workers=0, output=None, verbose=False, desc="predicting"):
    """Run ``module`` over ``samples`` a batch at a time, in inference mode.

    Parameters
    ----------
    module : torch.nn.Module
        Put in evaluation mode; moved to ``device`` for the call and back to
        the CPU afterwards, so fitted models hold no accelerator memory.
    samples : Samples
        Raw samples, fetched a batch at a time.
    preprocess : callable
        The backbone's batch preprocessing.
    batch_size : int
    device : str or torch.device, default="auto"
    amp_dtype : torch.dtype, optional
        Autocast dtype.
    num_workers : int, default=0
        DataLoader worker processes.
    output : callable, optional
        ``output(result, inputs)`` maps each batch's module output on the
        device (a softmax, pooled layer features).
    verbose : bool, default=False
        Show a progress bar labelled ``desc``.

    Returns
    -------
    ndarray of shape (n_samples, n_outputs), float32

    Examples
    --------
    >>> import torch
    >>> from sktransfer.inputs import as_samples
    >>> from sktransfer.backbones.preprocess import TensorPreprocess
    >>> samples = as_samples(np.ones((3, 2), dtype=np.float32), "tensor")
    >>> predict_batches(torch.nn.Identity(), samples, TensorPreprocess(), batch_size=2)
    array([[1., 1.],
           [1., 1.],
           [1., 1.]], dtype=float32)
    """
    device = resolve_device(device)
    batches = batch_order(samples, preprocess, batch_size)
    # Same-size image arrays travel to an accelerator as uint8 (a quarter of
    # the bytes of float32) and are resized and normalized there rather than
    # on a CPU core in the loader, where preprocessing runs otherwise.
    on_device = device.type != "cpu" and samples.kind in ("nchw", "nhwc")
    loader = torch.utils.data.DataLoader(
        samples, batch_sampler=batches, collate_fn=Collate(None if on_device else preprocess),
        num_workers=num_workers, pin_memory=device.type == "cuda")
    module.to(device).eval()
    out = None
    try:
        with torch.inference_mode(), autocast(device, amp_dtype):
            for idx, inputs in zip(batches, tqdm(loader, disable=not verbose, desc=desc,
                                                 unit="batch")):
                inputs = to_device(inputs, device)
                if on_device:
                    inputs = preprocess(inputs)
                result = module(inputs)
                if output is not None:
                    result = output(result, inputs)
                result = result.reshape(len(idx), -1).float().cpu().numpy()
                if out is None:
                    out = np.empty((len(samples), result.shape[1]), dtype=np.float32)
                out[idx] = result
    finally:
        if device.type != "cpu":
            # Keep the weights off the accelerator between calls, so that
            # parallel searches sharing a GPU do not hold its memory.
            module.to("cpu")
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return out

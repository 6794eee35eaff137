"""The new layers put on a backbone, and the network they form together.

A fine-tuned model is a pretrained backbone (its forward gives an embedding
``(B, D)``) followed by a freshly initialized head that maps the embedding to
the target task's outputs.
"""

import numbers

import numpy as np
import torch
from torch import nn

from ..inputs import Collate


def check_head(head):
    """Validate the ``head`` parameter of a fine-tuner.

    Raises
    ------
    ValueError
        When ``head`` is not None or a sequence of positive integers.
    """
    if head is None:
        return
    if isinstance(head, (str, bytes)) or not hasattr(head, "__iter__"):
        raise ValueError(f"head must be None (one linear layer) or a tuple of hidden "
                         f"layer sizes such as (256,); got {head!r}")
    sizes = list(head)
    if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in sizes):
        raise ValueError(f"head sizes must be positive integers; got {head!r}")


def embedding_width(backbone, samples):
    """The width of ``backbone``'s embedding, from one forward pass where it does not say.

    Parameters
    ----------
    backbone : Backbone
    samples : Samples
        The fit's samples (two of them go through the network).

    Returns
    -------
    int
    """
    if backbone.out_dim is not None:
        return int(backbone.out_dim)
    # One forward pass over two samples tells the width, and initializes
    # lazy layers (under the fit's seed) before the optimizer sees them.
    module = backbone.module
    n = min(2, len(samples))
    inputs, _ = Collate(backbone.preprocess)(samples.__getitems__(np.arange(n)))
    was_training = module.training
    module.eval()
    with torch.no_grad():
        width = module(inputs).reshape(n, -1).shape[1]
    module.train(was_training)
    return int(width)


def make_head(in_features, n_outputs, hidden=None, dropout=0.0):
    """Build a head mapping ``in_features`` embeddings to ``n_outputs`` values.

    Parameters
    ----------
    in_features : int
        Width of the backbone's embedding.
    n_outputs : int
        Classes (logits) or regression targets.
    hidden : sequence of int, optional
        ``None`` gives one linear layer (a linear probe when the backbone is
        frozen). A sequence such as ``(256, 64)`` gives an MLP with those
        hidden widths and ReLU activations.
    dropout : float, default=0.0
        Dropout probability applied before every linear layer of the head.

    Returns
    -------
    torch.nn.Sequential

    Examples
    --------
    >>> make_head(512, 10)
    Sequential(
      (0): Flatten(start_dim=1, end_dim=-1)
      (1): Linear(in_features=512, out_features=10, bias=True)
    )
    >>> [type(m).__name__ for m in make_head(512, 3, hidden=(64,), dropout=0.2)]
    ['Flatten', 'Dropout', 'Linear', 'ReLU', 'Dropout', 'Linear']
    """
    # Flatten first: a user's module may return (B, C, 1, 1) or similar.
    layers = [nn.Flatten()]
    width = int(in_features)
    for size in hidden or ():
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Linear(width, int(size)), nn.ReLU()]
        width = int(size)
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, int(n_outputs)))
    return nn.Sequential(*layers)


class BackboneWithHead(nn.Module):
    """``head(backbone(x))``: the network that is trained end to end.

    The backbone and head are registered as they are (not copied), so the
    estimator's ``backbone_`` and ``head_`` always hold the trained weights.

    Normalization layers listed in ``frozen_norms`` stay in evaluation mode
    even while the network trains: a frozen BatchNorm layer keeps using the
    running statistics it was pretrained with instead of drifting towards
    the target data's batch statistics.

    Parameters
    ----------
    backbone : torch.nn.Module
        Its forward takes the preprocessed batch and returns ``(B, D)``.
    head : torch.nn.Module
        Maps ``(B, D)`` to the outputs.

    Examples
    --------
    >>> import torch
    >>> net = BackboneWithHead(nn.Linear(4, 8), make_head(8, 3))
    >>> net(torch.zeros(2, 4)).shape
    torch.Size([2, 3])
    """

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.frozen_norms = []

    def forward(self, x):
        return self.head(self.backbone(x))

    def train(self, mode=True):
        super().train(mode)
        for norm in self.frozen_norms:
            norm.eval()
        return self

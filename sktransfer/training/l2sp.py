"""Penalties that keep a fine-tuned network close to what it transferred."""

import torch
from torch import nn

from .._utils.signature import positional_deprecated


class L2SP(nn.Module):
    r"""The L2-SP penalty: pull transferred weights towards their starting point.

    With :math:`\alpha` = ``alpha``, :math:`w` the current parameters,
    :math:`w^0` their pretrained values (the starting point, "SP"), :math:`S`
    the transferred parameters (every backbone parameter: weights, biases and
    normalization scales) and :math:`H` the new head's parameters, the
    penalty is exactly

    .. math::

        \Omega(w) = \frac{\alpha}{2} \sum_{i \in S} \lVert w_i - w^0_i \rVert_2^2
                  + \frac{\alpha}{2} \sum_{j \in H} \lVert w_j \rVert_2^2

    a sum over all entries (not a mean), with the factor 1/2. The head has no
    pretrained values, so it gets the plain L2 penalty. Frozen parameters
    cannot move, so their (zero) terms are skipped. This is the
    :math:`\lambda R(f_t, f_s)` regularizer of Li, Grandvalet and Davoine,
    "Explicit inductive bias for transfer learning with convolutional
    networks" (ICML 2018), with one strength for both terms.

    The reference values are buffers: they move to the training device with
    the network, are saved in pickles and load on a CPU-only machine.

    Parameters
    ----------
    alpha : float
        Strength of the penalty, >= 0.
    backbone : torch.nn.Module
        The backbone whose current parameters are the reference.

    Examples
    --------
    >>> import torch
    >>> from sktransfer.training.heads import BackboneWithHead
    >>> model = BackboneWithHead(nn.Linear(2, 2), nn.Linear(2, 1))
    >>> penalty = L2SP(0.5, backbone=model.backbone)
    >>> with torch.no_grad():
    ...     _ = model.backbone.weight.add_(1.0)  # 4 entries moved by 1
    ...     _ = model.head.weight.fill_(2.0)     # 2 entries of 2
    ...     _ = model.head.bias.zero_()
    >>> penalty(model).item()  # 0.5/2 * 4 + 0.5/2 * (4 + 4)
    3.0
    """

    @positional_deprecated
    def __init__(self, alpha, *, backbone):
        super().__init__()
        self.alpha = float(alpha)
        self.names = []
        for i, (name, param) in enumerate(backbone.named_parameters()):
            self.names.append(name)
            self.register_buffer(f"ref{i}", param.detach().clone())

    def references(self):
        """The reference values, in ``backbone.named_parameters()`` order."""
        return [getattr(self, f"ref{i}") for i in range(len(self.names))]

    def forward(self, model):
        """The penalty for ``model`` (a :class:`~sktransfer.training.heads.BackboneWithHead`)."""
        params = list(model.backbone.parameters())
        if len(params) != len(self.names):
            raise ValueError(f"the backbone has {len(params)} parameters but L2-SP "
                             f"holds references for {len(self.names)}")
        diffs = [p - ref for p, ref in zip(params, self.references()) if p.requires_grad]
        heads = [p for p in model.head.parameters() if p.requires_grad]
        total = sum((t.pow(2).sum() for t in diffs + heads), torch.zeros((), device=self.device))
        return 0.5 * self.alpha * total

    @property
    def device(self):
        first = next(self.buffers(), None)
        return first.device if first is not None else torch.device("cpu")

    def extra_repr(self):
        return f"alpha={self.alpha}, references={len(self.names)}"

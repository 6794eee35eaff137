"""Penalties toward the pretrained weights: the public home of :class:`L2SP`.

The class lives in :mod:`sktransfer.training.l2sp`, beside the rest of the
training loop; this module keeps ``sktransfer.regularizers.L2SP`` working
for code and for model files that name it.
"""

from .training.l2sp import L2SP

__all__ = ["L2SP"]

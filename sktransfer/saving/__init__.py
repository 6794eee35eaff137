"""Model files: :func:`sktransfer.save` and :func:`sktransfer.load`.

This room sits above the estimators: it names them when it writes a file and
rebuilds them when it reads one. What it builds on, and what the estimators
themselves use to pickle their networks, is :mod:`sktransfer.persistence`
below them (the trust rules, the codec of tensors and tagged JSON, and the
module serializer), which imports no estimator.

- :mod:`.format`: the layout of a model file (manifest, checksums, where
  the sktransfer estimators sit in a scikit-learn graph);
- :mod:`.writer`: :func:`save`;
- :mod:`.reader`: :func:`load`.
"""

from .reader import load
from .writer import save

__all__ = ["load", "save"]

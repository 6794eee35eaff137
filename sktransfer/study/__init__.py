"""Does transfer help here? Side-by-side studies of the ways to use a backbone.

- :mod:`.compare`: :func:`compare_transfer` and its :class:`TransferReport`;
- :mod:`.adaptation`: the domain-adaptation methods the study compares when
  given a labelled source (:class:`~sktransfer.study.adaptation.WithSource`).
"""

from .adaptation import ADAPTATION_METHODS, WithSource
from .compare import BASELINE, CONFIDENCE, METHODS, MORE_METHODS, TransferReport, compare_transfer

__all__ = ["ADAPTATION_METHODS", "BASELINE", "CONFIDENCE", "METHODS", "MORE_METHODS",
           "TransferReport", "WithSource", "compare_transfer"]

"""From ``X`` to an indexable source of raw samples, and the ``sample_domain`` convention.

The modules, by concern:

- :mod:`.samples`: :func:`as_samples` (``X`` checked for a backbone's
  modality and wrapped, nothing copied or decoded), the :class:`Samples`
  dataset and :class:`Collate`, :func:`estimator_samples`, the
  estimators' entry, and :class:`WeightedTargets` (targets with their
  ``sample_weight``);
- :mod:`.arrays`: image and tensor arrays;
- :mod:`.files`: image files, decoded when their batch is drawn;
- :mod:`.text`: lists of strings;
- :mod:`.audio`: clips from files or arrays, decoded and resampled a batch
  at a time;
- :mod:`.domains`: skada's ``sample_domain`` convention (which rows are
  labelled, which are the target domain's).

This room imports nothing else from sktransfer, and reads no estimator's
attributes: callers pass what it needs (a backbone, an estimator's
``sampling_rate``, ``max_duration`` or ``adaptation``) as arguments.
"""

from .audio import AudioSamples, audio_samples
from .domains import (DomainSplit, check_domain, check_prediction_domain, split_domains,
                      unlabelled_rows)
from .files import DECODING, IMAGE_SUFFIXES
from .samples import (Collate, Samples, WeightedTargets, as_samples, estimator_samples,
                      plain_targets)

__all__ = ["AudioSamples", "Collate", "DECODING", "DomainSplit", "IMAGE_SUFFIXES", "Samples",
           "as_samples", "audio_samples", "check_domain", "check_prediction_domain",
           "estimator_samples", "plain_targets", "split_domains", "unlabelled_rows",
           "WeightedTargets"]

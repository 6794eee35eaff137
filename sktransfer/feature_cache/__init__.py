"""The feature cache: embeddings stored on disk per sample content.

A frozen backbone gives the same embedding for the same sample every time,
so a search over the model placed after it (``GridSearchCV`` over an SVC's
``C``) needs each distinct sample embedded once. Cross-validation slices
``X`` differently for every fold, so a key on the whole of ``X`` would miss;
here every sample is keyed by a digest of its own content, and a call looks
all of its samples up at once and embeds only those not found.

The room, by concern (each imports only the ones listed before it):

- :mod:`.encoding`: a stable text of any value a network's plain attribute
  holds, so that the key covers it;
- :mod:`.keys`: what identifies an embedding: the output key of a
  computation (:func:`output_key`, from :func:`module_fingerprint` and
  :func:`weights_digest`), the digest of each sample
  (:func:`sample_digests`), and the one hash all of them and the store's
  checksums use;
- :mod:`.store`: the chunk files on disk (layout, atomic writes, checksums,
  stale temporary files) and the in-process index of which chunk holds
  which digest;
- :mod:`.cache`: :class:`FeatureCache`, the front the estimators call, and
  the run of one ``embed`` call.

Entries survive upgrades as long as :data:`FORMAT` and the key rules stay
as they are; changing either makes every stored entry miss, never be served
wrongly.
"""

from .cache import BLOCK_SIZE, FeatureCache
from .encoding import UnkeyableValueError
from .keys import (FORMAT, model_key, module_fingerprint, output_key, sample_digests,
                   snapshots_key, weights_digest)
from .store import NAMESPACE, STALE_AFTER

__all__ = ["BLOCK_SIZE", "FORMAT", "NAMESPACE", "STALE_AFTER", "FeatureCache",
           "UnkeyableValueError", "model_key", "module_fingerprint", "output_key",
           "sample_digests", "snapshots_key", "weights_digest"]

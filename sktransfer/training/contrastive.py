"""Contrastive fine-tuning from labels: pairs of samples and a cosine-similarity loss.

With a handful of labels per class, training the backbone with cross-entropy
through a freshly initialized head overfits the few samples; training it to
put samples of one class close together and samples of different classes
apart uses the labels quadratically (``n`` samples make ``n (n - 1) / 2``
pairs) and keeps the embedding space smooth, so that a linear head fitted on
the new embeddings generalizes (SetFit, Tunstall et al. 2022).

The pieces plug into the fine-tuners' skorch net:

- :func:`make_pairs` draws balanced pairs from the labels;
- :class:`PairRows` serves a pair as the two raw samples of one batch (fresh
  pairs each epoch), so the backbone's preprocessing (tokenization with
  shared padding, image normalization) and augmentation run once over both
  halves;
- :class:`CosinePairs` sits where the head sits and turns the ``2B``
  embeddings into ``B`` cosine similarities, which ``torch.nn.MSELoss``
  compares with the targets (1 for the same class, 0 otherwise).
"""

import numpy as np
import torch
from sklearn.utils import check_random_state
from torch import nn

from ..inputs import WeightedTargets


def make_pairs(y, n_pairs, random_state=None):
    """Draw ``n_pairs`` partners for every sample, half of the same class, half not.

    Sample ``i``'s ``k``-th pair is a same-class pair when ``i + k`` is even,
    so positives and negatives are balanced over the data set (to one pair)
    whatever ``n_pairs`` is. A sample alone in its class has no same-class
    partner and gets a different-class one instead; when ``y`` holds one
    class, every pair is a same-class pair. The cost is linear in
    ``len(y) * n_pairs``: pairs grow with the data, not with its square.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Class labels (any type numpy can sort).
    n_pairs : int
        Pairs per sample.
    random_state : int, RandomState or None
        Seeds the choice of partners.

    Returns
    -------
    first, second : ndarray of int64, shape (n_samples * n_pairs,)
        Indices of the two samples of each pair.
    target : ndarray of float32, shape (n_samples * n_pairs,)
        1.0 for pairs of the same class, 0.0 otherwise.

    Examples
    --------
    >>> first, second, target = make_pairs(["a", "a", "b", "b"], 2, random_state=0)
    >>> len(target), float(target.mean())
    (8, 0.5)
    >>> y = np.array(["a", "a", "b", "b"])
    >>> bool(np.all((y[first] == y[second]) == (target == 1)))
    True
    """
    rng = check_random_state(random_state)
    y = np.asarray(y)
    n = len(y)
    classes, cls = np.unique(y, return_inverse=True)
    counts = np.bincount(cls, minlength=len(classes))
    order = np.argsort(cls, kind="stable")  # samples grouped by class
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - starts[cls[order]]  # position within its class block

    first = np.repeat(np.arange(n), n_pairs)
    k = np.tile(np.arange(n_pairs), n)
    size = counts[cls[first]]
    # Without a partner of its own class a sample gets another class's, and
    # the reverse (y holding one class: a batch given to partial_fit).
    positive = (((first + k) % 2 == 0) & (size >= 2)) | (size == n)
    # Same class: a uniform draw among the other members of the block.
    u = (rng.random_sample(len(first)) * np.maximum(size - 1, 1)).astype(np.int64)
    u += u >= rank[first]
    same = order[starts[cls[first]] + np.minimum(u, size - 1)]
    # Other class: a uniform draw among the n - size samples outside the block.
    v = (rng.random_sample(len(first)) * np.maximum(n - size, 1)).astype(np.int64)
    v += np.where(v >= starts[cls[first]], size, 0)
    other = order[np.minimum(v, n - 1)]
    second = np.where(positive, same, other)
    return first, second.astype(np.int64), positive.astype(np.float32)


class PairRows(torch.utils.data.Dataset):
    """Pairs of rows drawn from their labels, fresh pairs every epoch.

    Index ``i`` of epoch ``e`` is ``e * len(self) + i``: the pairs of epoch
    ``e`` are :func:`make_pairs` under the seed ``seed + e``, computed where
    the batch is fetched, so DataLoader worker processes (which hold copies
    of the data set) draw exactly the pairs the main process would. Over
    ``E`` epochs a sample meets ``E * n_pairs`` partners, not the same
    ``n_pairs`` again. Plain indices below ``len(self)`` are epoch 0 (the
    fixed validation pairs).

    A batch of ``B`` pairs is fetched as ``2B`` raw samples (all first
    members, then all second members) and the ``B`` targets, so the
    DataLoader's ``collate_fn`` preprocesses the whole batch at once.

    Parameters
    ----------
    rows : Dataset with ``__getitems__``
        The samples (a :class:`~sktransfer.inputs.Samples` or
        :class:`~sktransfer.training.net.Rows`); their own targets, if any, are
        ignored.
    y : array-like of shape (len(rows),)
        The rows' labels.
    n_pairs : int
        Pairs per sample and epoch.
    seed : int
        Seed of epoch 0's pairs.
    weight : array-like of shape (len(rows),), optional
        The rows' ``sample_weight``: a pair's weight in the loss is the
        product of its two samples' weights.

    Examples
    --------
    >>> from sktransfer.inputs import as_samples
    >>> samples = as_samples(np.arange(8, dtype=np.float32).reshape(4, 2), "tensor")
    >>> pairs = PairRows(samples, [0, 0, 1, 1], n_pairs=1, seed=0)
    >>> x, t = pairs.__getitems__([0, 1])
    >>> len(pairs), tuple(x.shape), t.tolist()
    (4, (4, 2), [1.0, 0.0])
    >>> x[0].tolist()  # the first member of pair 0 is row 0
    [0.0, 1.0]
    """

    def __init__(self, rows, y, n_pairs, seed, weight=None):
        self.rows = rows
        self.y = np.asarray(y)
        self.weight = None if weight is None else np.asarray(weight)
        self.n_pairs = n_pairs
        self.seed = seed
        self._epochs = {}

    def __len__(self):
        return len(self.y) * self.n_pairs

    def pairs(self, epoch):
        """``(first, second, target)`` of ``epoch`` (kept for the last few epochs)."""
        if epoch not in self._epochs:
            if len(self._epochs) > 2:
                self._epochs.pop(min(self._epochs))
            self._epochs[epoch] = make_pairs(self.y, self.n_pairs, self.seed + epoch)
        return self._epochs[epoch]

    def __getitem__(self, i):
        return self.__getitems__([i])

    def __getitems__(self, indices):
        indices = np.asarray(indices)
        epoch, within = np.divmod(indices, len(self))
        first, second, target = [np.empty(len(indices), dtype=a.dtype)
                                 for a in self.pairs(int(epoch[0]))]
        for e in np.unique(epoch):
            where = epoch == e
            for out, drawn in zip((first, second, target), self.pairs(int(e))):
                out[where] = drawn[within[where]]
        raw = self.rows.__getitems__(np.concatenate([first, second]))
        if isinstance(raw, tuple):  # rows with targets: keep the samples only
            raw = raw[0]
        if self.weight is not None:
            # Each member stands for its sample: a pair weighs as both together.
            return raw, WeightedTargets(target, self.weight[first] * self.weight[second])
        return raw, target


class CosinePairs(nn.Module):
    """The "head" of pair training: cosine similarity of a batch's two halves.

    Takes the ``(2B, D)`` embeddings of a :class:`PairRows` batch and returns
    the ``B`` cosine similarities of row ``i`` and row ``B + i``. It has no
    parameters: only the backbone trains.

    Examples
    --------
    >>> emb = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0], [-1.0, -1.0]])
    >>> CosinePairs()(emb).round(decimals=4).tolist()
    [1.0, -1.0]
    """

    def forward(self, embeddings):
        first, second = embeddings.flatten(1).float().chunk(2)
        return nn.functional.cosine_similarity(first, second, dim=1)

"""The one class whose import path model files name: :class:`EstimatorSlot`.

The code that saves and loads model files lives in
:mod:`sktransfer.persistence`. This module stays because the scikit-learn
part of a model file (written by :mod:`skops.io`) names each slot's class by
its import path, ``sktransfer.serialization.EstimatorSlot``: files written
by every sktransfer so far name it so, and files written now must load in
those versions too. It imports nothing, so that path never pulls in more.
"""


class EstimatorSlot:
    """Stands in the skops part for the sktransfer estimator numbered ``index``.

    Parameters
    ----------
    index : int
        Its entry in the manifest's ``"estimators"`` list.
    """

    def __init__(self, index):
        self.index = index

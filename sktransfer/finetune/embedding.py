"""``transform`` of the fine-tuners: the fine-tuned backbone's embeddings."""

import numpy as np
from sklearn.base import TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ..scaling import LazyOutput, is_lazy_collection, lazy_call


class EmbedsWithBackbone(TransformerMixin):
    """Mixin of the fine-tuners: ``transform`` and ``fit_transform`` embed with the backbone.

    A ``TransformerMixin`` itself: scikit-learn's ``set_output`` wraps the
    ``transform`` and ``fit_transform`` that a subclass of it defines, so they
    are defined here, in such a subclass.
    """

    def fit_transform(self, X, y):
        """Fit, then embed ``X`` with the fine-tuned backbone.

        Parameters
        ----------
        X : array-like, list of paths, PIL images or strings
        y : array-like

        Returns
        -------
        ndarray of shape (n_samples, n_features_out_), float32
        """
        return self.fit(X, y).transform(X)

    def transform(self, X):
        """Embed ``X`` with the fine-tuned backbone.

        Parameters
        ----------
        X : array-like, list of paths, PIL images or strings, or a Dask collection
            A Dask array, DataFrame, Series or bag is embedded lazily on
            the Dask cluster (see :doc:`/scaling`).

        Returns
        -------
        ndarray of shape (n_samples, n_features_out_), float32
            For a Dask collection, the matching lazy one.
        """
        check_is_fitted(self)
        if is_lazy_collection(X):
            return self._lazy("transform", X, self.n_features_out_, np.float32,
                              self.get_feature_names_out())
        samples = self._samples(X, reset=False)
        return self._predict("transform", samples)

    def _lazy(self, method, X, width, dtype, names=None):
        """``method`` mapped over the Dask collection ``X`` (see :mod:`sktransfer.scaling`)."""
        return lazy_call(self, method, X, LazyOutput(width, dtype, names))


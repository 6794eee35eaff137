"""FineTunedClassifier and FineTunedRegressor: parameter transfer on skorch.

A pretrained backbone gets a new head and is trained on the target task,
with the controls that make transfer work on little data: freezing,
head-first training, discriminative learning rates, L2-SP, early stopping
and light augmentation. What the two share is
:class:`sktransfer.finetune.base._FineTuned`; skorch runs the training loop
underneath (:mod:`sktransfer.training`).
"""

import numbers

import numpy as np
import torch
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from .base import N_PAIRS, OBJECTIVES, _FineTuned
from .docs import ATTRIBUTES_DOC, PARAMS_DOC
from .._utils.signature import positional_deprecated
from .._utils.validation import InstanceOf, Interval, Options
from ..engine.resident import probabilities_agree
from ..inputs.domains import check_prediction_domain
from ..scaling import is_lazy_collection
from ..training.targets import (check_indicator, check_labels, check_regression_targets,
                               class_weights, encode_labels, fit_classes, is_multilabel,
                               label_weights, stratification, target_scaling)

__all__ = ["FineTunedClassifier", "FineTunedRegressor"]


class FineTunedClassifier(ClassifierMixin, _FineTuned):
    __doc__ = f"""Fine-tune a pretrained backbone with a new classification head.

    Parameter transfer: the backbone's pretrained weights are the starting
    point, a new head maps its embedding to the classes, and the network is
    trained with cross-entropy. Labels may be strings or any integers, binary
    or multiclass; a multilabel indicator ``y`` of shape (n_samples, n_labels)
    (0/1) trains one network with ``n_labels`` outputs and binary
    cross-entropy (user guide, "Weights and multilabel targets").

    Parameters
    ----------{PARAMS_DOC}
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes in the loss: ``{{label: weight}}``, or
        ``"balanced"`` for weights inversely proportional to class frequencies;
        they multiply ``sample_weight``. With a multilabel ``y``, each label's
        weight of its positive samples (``{{column: weight}}``; ``"balanced"``:
        its negative samples over its positive ones).
    objective : {{"cross_entropy", "contrastive"}}, default="cross_entropy"
        ``"cross_entropy"``: the network (backbone and head) trains end to end
        on the classification loss. ``"contrastive"`` (SetFit's recipe, for
        few labels): the backbone trains on pairs of samples drawn from the
        labels, pulling the embeddings of a same-class pair together (cosine
        similarity towards 1) and pushing other pairs apart (towards 0), with
        the mean squared error of the cosine similarity as the loss; then the
        head is fitted to convergence on the new embeddings (see
        ``freeze_epochs``). ``max_epochs``, ``lr``, ``backbone_lr_mult``,
        ``freeze`` (not all of the backbone), ``l2sp``, ``augment`` (two
        independent views per pair), ``early_stopping`` (on pairs of the
        held-out samples) apply to the pair training; ``freeze_epochs`` does
        not (there is no head in it); ``history_`` records the pair loss.
        ``transform`` gives the contrastively tuned embeddings. Its defaults
        (``lr=2e-4``, ``max_epochs=3``, ``n_pairs=8``) were chosen from a sweep
        on all-MiniLM-L6-v2 with short reviews at 8 labels per class; the
        user guide ("Few labels") and ``benchmarks/RESULTS.md`` show how it
        compares with frozen embeddings + ``LogisticRegression``
        (``benchmarks/bench_fewshot.py``).
    n_pairs : int, default={N_PAIRS}
        With ``objective="contrastive"``: pairs per training sample and
        epoch, half of the same class and half not, drawn afresh every epoch
        (a sample meets ``n_pairs * max_epochs`` partners; the pairs grow
        linearly with the samples, not quadratically). What counts is the
        number of steps, ``n_pairs * max_epochs``, more than how it is split
        (user guide, "Few labels").

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The labels, in the order of :meth:`predict_proba`'s columns
        (``np.arange(n_labels)`` for a multilabel ``y``).{ATTRIBUTES_DOC}

    See Also
    --------
    FineTunedRegressor : the same for regression targets.
    PretrainedFeatureTransformer : a frozen backbone as a feature extractor.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from torch import nn
    >>> from sktransfer import FineTunedClassifier
    >>> _ = torch.manual_seed(0)  # the backbone's initial weights (random_state seeds the rest)
    >>> rng = np.random.RandomState(0)
    >>> X = rng.rand(40, 4).astype(np.float32)
    >>> y = np.where(X[:, 0] > 0.5, "big", "small")
    >>> clf = FineTunedClassifier(nn.Sequential(nn.Linear(4, 16), nn.ReLU()), lr=0.05,
    ...                           max_epochs=20, random_state=0).fit(X, y)
    >>> clf.classes_
    array(['big', 'small'], dtype='<U5')
    >>> clf.predict_proba(X[:2]).shape
    (2, 2)
    >>> clf.score(X, y) > 0.8
    True
    """

    _score_name = "accuracy"
    _served_purposes = ("proba", "transform")
    # Domain-aware pipelines and scorers (skada's) pass sample_domain to
    # prediction; request it by default, as skada's own estimators do.
    __metadata_request__predict = {"sample_domain": True}
    __metadata_request__predict_proba = {"sample_domain": True}
    __metadata_request__score = {"sample_domain": True}

    _parameter_constraints = {
        **_FineTuned._parameter_constraints,
        "class_weight": [None, Options(("balanced",)),
                         InstanceOf(dict, "a dict of {label: weight}")],
        "objective": [Options(OBJECTIVES)],
        "n_pairs": [Interval(numbers.Integral, 1)],
    }

    @positional_deprecated
    def __init__(self, backbone="torchvision:resnet18", *, weights="DEFAULT", head=None,
                 dropout=0.0, freeze="auto", freeze_epochs=0, lr=None, backbone_lr_mult=1.0,
                 weight_decay=0.01, optimizer="adamw", schedule="onecycle", l2sp=0.0,
                 max_epochs=None, batch_size=32, early_stopping=None, validation_fraction=0.1,
                 augment=False, class_weight=None, device="auto", precision="auto",
                 num_workers=0, image_size=None, prompt=None, random_state=None, verbose=0,
                 callbacks=None, keep_optimizer=False, objective="cross_entropy", n_pairs=N_PAIRS,
                 distributed="auto", sync_batchnorm=False, runtime="torch", quantize=None,
                 sampling_rate=None, max_duration="auto", adaptation=None,
                 adaptation_weight=None, gradient_accumulation_steps=1,
                 gradient_checkpointing=False, adapter=None):
        super().__init__(
            backbone=backbone, weights=weights, head=head, dropout=dropout, freeze=freeze,
            freeze_epochs=freeze_epochs, lr=lr, backbone_lr_mult=backbone_lr_mult,
            weight_decay=weight_decay, optimizer=optimizer, schedule=schedule, l2sp=l2sp,
            max_epochs=max_epochs, batch_size=batch_size, early_stopping=early_stopping,
            validation_fraction=validation_fraction, augment=augment, device=device,
            precision=precision, num_workers=num_workers, image_size=image_size,
            prompt=prompt, random_state=random_state, verbose=verbose, callbacks=callbacks,
            keep_optimizer=keep_optimizer, distributed=distributed,
            sync_batchnorm=sync_batchnorm, runtime=runtime, quantize=quantize,
            sampling_rate=sampling_rate, max_duration=max_duration, adaptation=adaptation,
            adaptation_weight=adaptation_weight,
            gradient_accumulation_steps=gradient_accumulation_steps,
            gradient_checkpointing=gradient_checkpointing, adapter=adapter)
        self.class_weight = class_weight
        self.objective = objective
        self.n_pairs = n_pairs

    def _objective(self):
        return self.objective

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """Train one more epoch over ``(X, y)``; the first call also builds the model.

        Training continues from the current weights and optimizer state (and
        the epoch count of ``freeze_epochs``); ``early_stopping`` does not
        apply, every sample given trains. Hyperparameters set after the first
        fit take effect at the next :meth:`fit`. With
        ``objective="contrastive"``, the epoch trains the backbone on pairs of
        the samples given, and the head is then refitted on them.

        Parameters
        ----------
        X : array-like, list of paths, PIL images or strings
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
        classes : array-like, optional
            All the labels, needed on the first call when this batch does not
            hold every class (with a multilabel ``y``: ``np.arange(n_labels)``
            or None).
        sample_weight : array-like of shape (n_samples,), scalar or None, default=None
            Weights of the samples in the loss, as in :meth:`fit`.

        Returns
        -------
        self
        """
        if classes is not None and not self.__sklearn_is_fitted__():
            self._all_classes = np.unique(np.asarray(classes))
        try:
            return self._partial_fit(X, y, sample_weight)
        finally:
            self.__dict__.pop("_all_classes", None)

    def predict_proba(self, X, sample_domain=None):
        """Class probabilities, columns in the order of ``classes_``.

        Parameters
        ----------
        X : array-like, list of paths, PIL images or strings, or a Dask collection
            A Dask array, DataFrame, Series or bag is predicted lazily on
            the Dask cluster (see :doc:`/scaling`).
        sample_domain : array-like of shape (n_samples,) or None, default=None
            Accepted so that domain-aware scorers (skada's) can pass it, with
            skada's convention (positive: source, negative: target); a
            sample's prediction does not depend on its domain.

        Returns
        -------
        ndarray of shape (n_samples, n_classes), float32
            Rows sum to 1; with a multilabel ``y``, each column is its
            label's probability (a sigmoid), independently of the others.
            For a Dask collection, the matching lazy one (a DataFrame's
            columns are ``classes_``).
        """
        check_is_fitted(self)
        if is_lazy_collection(X):
            return self._lazy("predict_proba", X, len(self.classes_), np.float32,
                              list(self.classes_))
        check_prediction_domain(sample_domain, X)
        samples = self._samples(X, reset=False)
        return self._predict("proba", samples)

    def predict(self, X, sample_domain=None):
        """Predicted labels.

        Parameters
        ----------
        X : array-like, list of paths, PIL images or strings, or a Dask collection
        sample_domain : array-like of shape (n_samples,) or None, default=None
            Accepted so that domain-aware scorers (skada's) can pass it, with
            skada's convention (positive: source, negative: target); a
            sample's prediction does not depend on its domain.

        Returns
        -------
        ndarray of shape (n_samples,)
            With a multilabel ``y``: the int64 indicator matrix of shape
            (n_samples, n_labels), 1 where a label's probability exceeds 0.5.
            For a Dask collection, the matching lazy one (a Series for a
            DataFrame or Series).
        """
        multilabel = getattr(self, "_multilabel", False)
        if is_lazy_collection(X):
            check_is_fitted(self)
            return self._lazy("predict", X, len(self.classes_) if multilabel else None,
                              np.int64 if multilabel else self.classes_.dtype)
        proba = self.predict_proba(X, sample_domain)
        if multilabel:
            return (proba > 0.5).astype(np.int64)
        return self.classes_[proba.argmax(axis=1)]

    def score(self, X, y, sample_weight=None, sample_domain=None, allow_source=False):
        """The accuracy on ``(X, y)``: the subset accuracy with a multilabel ``y``.

        Parameters
        ----------
        X : array-like, list of paths, PIL images or strings
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
        sample_weight : array-like of shape (n_samples,), optional
        sample_domain : array-like of shape (n_samples,) or None, default=None
            Accepted so that domain-aware scorers (skada's
            ``ImportanceWeightedScorer`` and ``MixValScorer``) can pass it;
            see :meth:`predict`.
        allow_source : bool, default=False
            skada's flag for scoring source samples, which its
            ``ImportanceWeightedScorer`` passes; predictions do not depend on
            the domain, so source and target samples are scored alike.

        Returns
        -------
        float
        """
        return _scored(self, ClassifierMixin, X, y, sample_weight, sample_domain)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def _check_target_kind(self, y, sample_domain):
        if not is_multilabel(y):
            return
        if self.objective == "contrastive":
            raise ValueError("objective='contrastive' draws pairs of the same class and of "
                             "different classes; a multilabel y has no single class per "
                             "sample. Use objective='cross_entropy' for multilabel targets.")
        if self.adaptation is not None or sample_domain is not None:
            raise ValueError("domain adaptation marks unlabelled samples with y = -1, which "
                             "a multilabel y cannot hold; fit multilabel targets with "
                             "adaptation=None and no sample_domain.")

    def _check_y(self, y, reset, sample_weight=None):
        if reset:
            self._multilabel = is_multilabel(y)
        if getattr(self, "_multilabel", False):  # models saved before multilabel lack it
            Y = check_indicator(y, None if reset else len(self.classes_))
            if reset:
                self.classes_ = np.arange(Y.shape[1])
                given = getattr(self, "_all_classes", None)
                if given is not None and not np.array_equal(given, self.classes_):
                    raise ValueError(f"classes must be np.arange({Y.shape[1]}) (or None) with "
                                     f"a multilabel y of {Y.shape[1]} labels; got "
                                     f"{given.tolist()}")
                self._class_weights = label_weights(self.class_weight, Y)
            return Y
        y = check_labels(y, type(self).__name__)
        if reset:
            self.classes_ = fit_classes(y, getattr(self, "_all_classes", None))
            self._class_weights = class_weights(self.class_weight, self.classes_, y)
        return encode_labels(y, self.classes_)

    def _n_outputs(self):
        return len(self.classes_)

    def _criterion(self):
        weights = getattr(self, "_class_weights", None)
        weights = None if weights is None else torch.from_numpy(weights)
        if getattr(self, "_multilabel", False):
            return torch.nn.BCEWithLogitsLoss(pos_weight=weights)
        return torch.nn.CrossEntropyLoss(weight=weights)

    def _validation_score(self):
        return "subset_accuracy" if getattr(self, "_multilabel", False) else "accuracy"

    def _probabilities(self):
        return _sigmoid if getattr(self, "_multilabel", False) else super()._probabilities()

    def _fit_probe(self, X, agree=probabilities_agree):
        # A classifier's bf16 must give the same labels and near probabilities.
        return super()._fit_probe(X, agree)

    def _stratify(self, target, n_valid):
        # Multilabel rows have no single class to stratify by: an unstratified split.
        return None if getattr(self, "_multilabel", False) else stratification(target, n_valid)

    @property
    def multilabel_(self):
        """bool: whether ``fit`` saw a multilabel indicator ``y`` (sigmoid outputs)."""
        check_is_fitted(self, "classes_")
        return bool(getattr(self, "_multilabel", False))  # files saved before multilabel


class FineTunedRegressor(RegressorMixin, _FineTuned):
    __doc__ = f"""Fine-tune a pretrained backbone with a new regression head.

    Parameter transfer with a mean squared error loss. ``y`` may be 1-D or
    2-D (several targets); targets are standardized for training (so the
    learning rate does not depend on their scale) and predictions are mapped
    back, so losses in ``history_`` are on the standardized scale.

    Parameters
    ----------{PARAMS_DOC}

    Attributes
    ----------
    n_outputs_ : int
        Number of targets.{ATTRIBUTES_DOC}

    See Also
    --------
    FineTunedClassifier : the same for class labels.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from torch import nn
    >>> from sktransfer import FineTunedRegressor
    >>> _ = torch.manual_seed(0)  # the backbone's initial weights (random_state seeds the rest)
    >>> rng = np.random.RandomState(0)
    >>> X = rng.rand(64, 3).astype(np.float32)
    >>> y = 100 * X[:, 0] + 50
    >>> reg = FineTunedRegressor(nn.Sequential(nn.Linear(3, 16), nn.ReLU()), lr=0.05,
    ...                          max_epochs=30, random_state=0).fit(X, y)
    >>> reg.predict(X[:3]).shape
    (3,)
    >>> reg.score(X, y) > 0.8
    True
    """

    _score_name = "r2"
    _served_purposes = ("transform", "raw")
    __metadata_request__predict = {"sample_domain": True}
    __metadata_request__score = {"sample_domain": True}

    def partial_fit(self, X, y, sample_weight=None):
        """Train one more epoch over ``(X, y)``; the first call also builds the model.

        Training continues from the current weights and optimizer state;
        ``early_stopping`` does not apply, every sample given trains. The
        target scaling is set by the first call.

        Parameters
        ----------
        X : array-like, list of paths, PIL images or strings
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        sample_weight : array-like of shape (n_samples,), scalar or None, default=None
            Weights of the samples in the loss, as in :meth:`fit`.

        Returns
        -------
        self
        """
        return self._partial_fit(X, y, sample_weight)

    def predict(self, X, sample_domain=None):
        """Predicted targets, shaped like the ``y`` given to ``fit``.

        Parameters
        ----------
        X : array-like, list of paths, PIL images or strings, or a Dask collection
        sample_domain : array-like of shape (n_samples,) or None, default=None
            Accepted so that domain-aware scorers (skada's) can pass it, with
            skada's convention (positive: source, negative: target); a
            sample's prediction does not depend on its domain.

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_outputs), float64
            For a Dask collection, the matching lazy one.
        """
        check_is_fitted(self)
        if is_lazy_collection(X):
            return self._lazy("predict", X, None if self._y_1d else self.n_outputs_,
                              np.float64)
        check_prediction_domain(sample_domain, X)
        samples = self._samples(X, reset=False)
        scaled = self._predict("raw", samples).astype(np.float64)
        pred = scaled * self._y_scale + self._y_mean
        return pred.ravel() if self._y_1d else pred

    def score(self, X, y, sample_weight=None, sample_domain=None, allow_source=False):
        """The coefficient of determination :math:`R^2` on ``(X, y)``.

        Parameters
        ----------
        X : array-like, list of paths, PIL images or strings
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        sample_weight : array-like of shape (n_samples,), optional
        sample_domain : array-like of shape (n_samples,) or None, default=None
            Accepted so that domain-aware scorers (skada's
            ``ImportanceWeightedScorer`` and ``MixValScorer``) can pass it;
            see :meth:`predict`.
        allow_source : bool, default=False
            skada's flag for scoring source samples, which its
            ``ImportanceWeightedScorer`` passes; predictions do not depend on
            the domain, so source and target samples are scored alike.

        Returns
        -------
        float
        """
        return _scored(self, RegressorMixin, X, y, sample_weight, sample_domain)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _check_y(self, y, reset, sample_weight=None):
        y = check_regression_targets(y, type(self).__name__)
        y2d = y.reshape(len(y), -1)
        if reset:
            self._y_1d = y.ndim == 1
            self.n_outputs_ = y2d.shape[1]
            # Weighted: a row of weight 0 is as if removed, weight k as if repeated.
            self._y_mean, self._y_scale = target_scaling(y2d, sample_weight)
        elif y2d.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {y2d.shape[1]} targets, but the model was fitted with "
                             f"{self.n_outputs_}")
        return ((y2d - self._y_mean) / self._y_scale).astype(np.float32)

    def _n_outputs(self):
        return self.n_outputs_

    @property
    def target_mean_(self):
        """ndarray of shape (n_outputs,): the target mean ``predict`` adds back."""
        check_is_fitted(self, "n_outputs_")
        return self._y_mean

    @property
    def target_scale_(self):
        """ndarray of shape (n_outputs,): the target scale ``predict`` multiplies by."""
        check_is_fitted(self, "n_outputs_")
        return self._y_scale

    def _criterion(self):
        return torch.nn.MSELoss()


def _sigmoid(out, _inputs):
    return out.float().sigmoid()


def _scored(estimator, mixin, X, y, sample_weight, sample_domain):
    """scikit-learn's score of ``mixin`` (accuracy or R^2), after checking ``sample_domain``."""
    if not is_lazy_collection(X):
        check_prediction_domain(sample_domain, X)
    return mixin.score(estimator, X, y, sample_weight=sample_weight)

"""Targets as the training loop takes them: class labels as codes, regression targets scaled.

The fine-tuners train on int64 class codes (cross-entropy) or standardized
float32 targets (mean squared error); these functions check what the user
gave and encode it, with errors that name what is wrong.
"""

import numpy as np
from sklearn.utils import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_array, column_or_1d


def _check_given(y, estimator_name):
    if y is None:
        raise ValueError(f"{estimator_name} requires y to be passed, but the target y is None.")


def check_labels(y, estimator_name):
    """``y`` as a 1-D array of class labels (strings or integers), checked."""
    _check_given(y, estimator_name)
    y = check_array(y, ensure_2d=False, dtype=None, input_name="y")
    if y.ndim == 2 and y.shape[1] > 1:
        raise ValueError(f"y of shape {y.shape} is neither one label per sample nor a "
                         f"multilabel indicator matrix (0/1 columns; this y is "
                         f"{type_of_target(y)!r}). {estimator_name} takes labels or a "
                         "multilabel indicator; for several multiclass outputs, fit one "
                         "classifier per column (sklearn.multioutput.MultiOutputClassifier).")
    y = column_or_1d(y, warn=True)
    check_classification_targets(y)
    return y


def fit_classes(y, classes=None):
    """The sorted classes of a first fit: ``classes`` when given, else those of ``y``."""
    classes = np.unique(y) if classes is None else classes
    if len(classes) < 2:
        raise ValueError(f"y has only one class ({classes[0]!r}); a classifier needs "
                         "samples of at least 2 classes.")
    unknown = np.setdiff1d(y, classes)
    if unknown.size:
        raise ValueError(f"y has labels {unknown.tolist()} that are not in classes")
    return classes


def encode_labels(y, classes):
    """The int64 codes of ``y`` among ``classes``, refusing labels of no class."""
    unknown = np.setdiff1d(y, classes)
    if unknown.size:
        raise ValueError(f"y has labels {unknown.tolist()} that were not seen in the "
                         f"first fit; the classes are {classes.tolist()}")
    return np.searchsorted(classes, y).astype(np.int64)


def class_weights(class_weight, classes, y):
    """The loss weight of each class for ``class_weight`` (None, "balanced" or a dict)."""
    if class_weight is None:
        return None
    full = np.ones(len(classes))
    if isinstance(class_weight, dict):
        unknown = [label for label in class_weight if label not in set(classes)]
        if unknown:
            raise ValueError(f"class_weight names labels {unknown} that are not classes; "
                             f"the classes are {classes.tolist()}")
        for label, weight in class_weight.items():
            full[np.searchsorted(classes, label)] = weight
    else:
        present = np.unique(y)
        full[np.searchsorted(classes, present)] = compute_class_weight(
            "balanced", classes=present, y=y)
    return full.astype(np.float32)


def stratification(codes, n_valid):
    """The labels to stratify a validation split of ``n_valid`` by, or None where it cannot."""
    counts = np.bincount(codes)
    counts = counts[counts > 0]
    if counts.min() >= 2 and n_valid >= len(counts) and len(codes) - n_valid >= len(counts):
        return np.asarray(codes)
    return None


def check_regression_targets(y, estimator_name):
    """``y`` as float64 of shape (n_samples,) or (n_samples, n_outputs), checked."""
    _check_given(y, estimator_name)
    y = check_array(y, ensure_2d=False, dtype=np.float64, input_name="y")
    if y.ndim not in (1, 2) or (y.ndim == 2 and y.shape[1] == 0):
        raise ValueError(f"y must have shape (n_samples,) or (n_samples, n_outputs); got "
                         f"{y.shape}")
    return y


def target_scaling(y2d, sample_weight=None):
    """The mean and scale that standardize each column of ``y2d`` (scale 1 where constant).

    With ``sample_weight``, the weighted mean and standard deviation.

    Examples
    --------
    >>> y = np.array([[0.0], [2.0], [10.0]])
    >>> target_scaling(y, np.array([1.0, 1.0, 0.0]))
    (array([1.]), array([1.]))
    """
    if sample_weight is None:
        std = y2d.std(axis=0)
        return y2d.mean(axis=0), np.where(std > 0, std, 1.0)
    w = np.asarray(sample_weight, dtype=np.float64)
    mean = np.average(y2d, axis=0, weights=w)
    std = np.sqrt(np.average((y2d - mean) ** 2, axis=0, weights=w))
    return mean, np.where(std > 0, std, 1.0)


def is_multilabel(y):
    """Whether ``y`` is a multilabel indicator matrix (an (n, k) array of 0/1, k >= 2)."""
    if y is None or (isinstance(y, (list, tuple)) and len(y) == 0):
        return False
    return type_of_target(y, input_name="y") == "multilabel-indicator"


def check_indicator(y, n_labels=None):
    """A multilabel indicator ``y`` as float32 (n, k) 0/1, with ``n_labels`` columns if given."""
    y = check_array(y, dtype=None, input_name="y")
    if n_labels is not None and y.shape[1] != n_labels:
        raise ValueError(f"y has {y.shape[1]} labels, but the model was fitted with "
                         f"{n_labels}")
    return y.astype(np.float32)


def label_weights(class_weight, indicator):
    """Each label's positive weight (``BCEWithLogitsLoss``'s ``pos_weight``), or None.

    ``class_weight`` is ``{label_index: weight}`` or ``"balanced"``: for each
    label, its negative samples over its positive ones (1 where a label has
    no positive sample), so that both count alike.

    Examples
    --------
    >>> Y = np.array([[1, 0], [0, 0], [0, 1], [0, 1]])
    >>> label_weights("balanced", Y).tolist(), label_weights({1: 2.0}, Y).tolist()
    ([3.0, 1.0], [1.0, 2.0])
    """
    if class_weight is None:
        return None
    n_labels = indicator.shape[1]
    if isinstance(class_weight, dict):
        unknown = [k for k in class_weight
                   if not (isinstance(k, (int, np.integer)) and 0 <= k < n_labels)]
        if unknown:
            raise ValueError(f"class_weight names labels {unknown}; with a multilabel y the "
                             f"labels are the columns 0 to {n_labels - 1}")
        full = np.ones(n_labels)
        for label, weight in class_weight.items():
            full[label] = weight
        return full.astype(np.float32)
    positive = (np.asarray(indicator) > 0).sum(0)
    negative = len(indicator) - positive
    return np.where(positive > 0, negative / np.maximum(positive, 1), 1.0).astype(np.float32)

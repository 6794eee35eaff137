"""Parameter validation in one declarative style, as scikit-learn's ``_parameter_constraints``.

Each estimator declares, per parameter, what values it takes
(``_parameter_constraints``), and ``fit`` calls :func:`validate_params`
before anything else. Every refusal is an :class:`InvalidParameterError`
(a ``ValueError`` and a ``TypeError``, as scikit-learn's) whose message names
the parameter, what it takes and the value given::

    batch_size must be an integer >= 1; got 0

Why not scikit-learn's own ``sklearn.utils._param_validation``: it is
private, its constraint classes changed between releases (imbalanced-learn
vendors a copy for that reason), and its messages ("The 'batch_size'
parameter of X must be an int in the range [1, inf)") are not the ones our
users already match on.
"""

import abc
import numbers
import os

import numpy as np
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from .device import PRECISIONS, check_device


class InvalidParameterError(ValueError, TypeError):
    """A parameter value the estimator or function does not take.

    A subclass of both ``ValueError`` and ``TypeError``, as scikit-learn's,
    so code catching either keeps working.
    """


def is_fitted(estimator, attributes=None):
    """Whether ``estimator`` is fitted, by scikit-learn's ``check_is_fitted`` rules."""
    try:
        check_is_fitted(estimator, attributes)
    except NotFittedError:
        return False
    return True


# -- constraints ---------------------------------------------------------------------------

class Constraint(abc.ABC):
    """What one parameter may be; subclasses say which values and how to name them."""

    @abc.abstractmethod
    def accepts(self, value):
        """Whether ``value`` is allowed."""

    @abc.abstractmethod
    def phrases(self):
        """How the allowed values read in a message, one phrase per alternative."""


def _is_bool(value):
    return isinstance(value, (bool, np.bool_))


class Interval(Constraint):
    """A real or integral number, finite, within bounds (bools refused).

    Parameters
    ----------
    kind : numbers.Integral or numbers.Real
    low, high : number or None
        The bounds; None for no bound.
    closed : {"left", "right", "both", "neither"}, default="left"
        Which bounds are included.

    Examples
    --------
    >>> import numbers
    >>> Interval(numbers.Integral, 1).phrases()
    ['an integer >= 1']
    >>> Interval(numbers.Real, 0, 1, closed="neither").accepts(1.0)
    False
    """

    def __init__(self, kind, low=None, high=None, *, closed="left"):
        self.kind, self.low, self.high, self.closed = kind, low, high, closed

    def accepts(self, value):
        if _is_bool(value) or not isinstance(value, self.kind) or not np.isfinite(value):
            return False
        left = self.closed in ("left", "both")
        right = self.closed in ("right", "both")
        if self.low is not None and not (value >= self.low if left else value > self.low):
            return False
        return self.high is None or (value <= self.high if right else value < self.high)

    def phrases(self):
        what = "an integer" if self.kind is numbers.Integral else "a number"
        left = self.closed in ("left", "both")
        right = self.closed in ("right", "both")
        if self.low is not None and self.high is not None:
            return [f"{what} in {'[' if left else '('}{self.low}, {self.high}"
                    f"{']' if right else ')'}"]
        if self.low is not None:
            return [f"{what} {'>=' if left else '>'} {self.low}"]
        if self.high is not None:
            return [f"{what} {'<=' if right else '<'} {self.high}"]
        return [what]


class Options(Constraint):
    """One of a few values, by equality within a kind: ``True`` is not ``1``.

    Numpy scalars count as their Python kind (a search over a numpy array of
    names sets ``np.str_`` values).

    Examples
    --------
    >>> import numpy as np
    >>> Options(("avg", "max")).accepts(np.str_("max")), Options((1,)).accepts(True)
    (True, False)
    """

    def __init__(self, values):
        self.values = tuple(values)

    def accepts(self, value):
        if isinstance(value, np.ndarray):
            return False
        for option in self.values:
            if option is None or value is None:
                if option is value:
                    return True
            elif (_is_bool(option) == _is_bool(value)
                  and isinstance(option, str) == isinstance(value, str) and value == option):
                return True
        return False

    def phrases(self):
        return [repr(v) for v in self.values]


class Boolean(Constraint):
    """``True`` or ``False`` (numpy bools too)."""

    def accepts(self, value):
        return _is_bool(value)

    def phrases(self):
        return ["True", "False"]


class InstanceOf(Constraint):
    """An instance of ``types``, read as ``description`` in messages."""

    def __init__(self, types, description):
        self.types, self.description = types, description

    def accepts(self, value):
        return isinstance(value, self.types) and not (_is_bool(value)
                                                      and bool not in _as_tuple(self.types))

    def phrases(self):
        return [self.description]


class Checked(Constraint):
    """A value that ``check(value)`` returns for without raising.

    For parameters whose rules need more than a type and a range (an
    optimizer name or class, a device this machine has): ``check`` raises
    its own error naming the parameter, which :func:`check_param` lets
    propagate when no other constraint of the parameter accepts the value.
    """

    def __init__(self, check):
        self.check = check

    def accepts(self, value):
        try:
            self.check(value)
        except (ValueError, TypeError):
            return False
        return True

    def phrases(self):
        return []


class AnyOf:
    """Several constraints with one description of them in messages.

    Examples
    --------
    >>> import numbers
    >>> rule = AnyOf(Interval(numbers.Integral, 1), None, description="a patience in epochs")
    >>> check_param("early_stopping", 0, rule)
    Traceback (most recent call last):
    ...
    sktransfer._utils.validation.InvalidParameterError: early_stopping must be a patience in epochs; got early_stopping=0
    """

    def __init__(self, *constraints, description=None):
        self.constraints, self.description = constraints, description


def _as_tuple(types):
    return types if isinstance(types, tuple) else (types,)


def _alternatives(phrases):
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " or " + phrases[-1]


def check_param(name, value, rule):
    """Raise :class:`InvalidParameterError` unless a constraint of ``rule`` accepts ``value``.

    Parameters
    ----------
    name : str
    value : object
    rule : list of Constraint or None, or AnyOf
        ``None`` in the list accepts None.

    Examples
    --------
    >>> import numbers
    >>> check_param("batch_size", 0, [Interval(numbers.Integral, 1)])
    Traceback (most recent call last):
    ...
    sktransfer._utils.validation.InvalidParameterError: batch_size must be an integer >= 1; got batch_size=0
    >>> check_param("precision", "fp8", [Options(("auto", "fp32"))])
    Traceback (most recent call last):
    ...
    sktransfer._utils.validation.InvalidParameterError: precision must be one of ('auto', 'fp32'); precision='fp8' is not one of them
    """
    description = None
    if isinstance(rule, AnyOf):
        rule, description = rule.constraints, rule.description
    constraints = list(rule) if isinstance(rule, (list, tuple)) else [rule]
    if any(value is None if c is None else c.accepts(value) for c in constraints):
        return
    for constraint in constraints:
        if isinstance(constraint, Checked):
            constraint.check(value)  # raises its own, more specific message
    if description is None:
        if len(constraints) == 1 and isinstance(constraints[0], Options):
            raise InvalidParameterError(
                f"{name} must be one of {constraints[0].values}; {name}={value!r} is not one "
                "of them")
        description = _alternatives([p for c in constraints for p in
                                     (["None"] if c is None else c.phrases())])
    raise InvalidParameterError(f"{name} must be {description}; got {name}={value!r}")


def validate_params(estimator, unused=()):
    """Check every parameter ``estimator`` declares in ``_parameter_constraints``.

    Called first thing in ``fit`` (scikit-learn's convention: ``__init__``
    stores, ``fit`` validates), so a search can set anything and a bad value
    fails the fit that uses it, naming the parameter.

    Parameters
    ----------
    estimator : estimator
    unused : collection of str
        Parameters this fit does not use (``validation_fraction`` without
        early stopping), left unchecked so that a search may set any value.

    Raises
    ------
    InvalidParameterError
        For the first parameter, in declaration order, that no constraint accepts.
    """
    params = estimator.get_params(deep=False)
    for name, rule in type(estimator)._parameter_constraints.items():
        if name not in unused:
            check_param(name, params[name], rule)


def validate_args(constraints, arguments):
    """Check the arguments of a public function as :func:`validate_params` checks parameters.

    Parameters
    ----------
    constraints : dict of {str: rule}
    arguments : dict of {str: value}
        Typically ``locals()`` at the top of the function.
    """
    for name, rule in constraints.items():
        check_param(name, arguments[name], rule)


#: The parameters every estimator that runs a backbone takes, declared once so
#: that the transformer and the fine-tuners accept and refuse them alike.
BACKBONE_CONSTRAINTS = {
    "weights": [None, InstanceOf((str, os.PathLike), "'DEFAULT', a weights tag or a path "
                                                     "to a state dict file")],
    "batch_size": [Interval(numbers.Integral, 1)],
    "device": [Checked(check_device)],
    "precision": [Options(PRECISIONS)],
    "num_workers": [Interval(numbers.Integral, 0)],
    "image_size": [Interval(numbers.Integral, 1), None],
    "prompt": [None, InstanceOf(str, "a prompt name or text")],
    "random_state": [None, Interval(numbers.Integral),
                     InstanceOf(np.random.RandomState, "a numpy.random.RandomState")],
    "verbose": [Interval(numbers.Integral, 0), Boolean()],
    # Audio backbones: the rate of array inputs, and the seconds kept of each clip.
    "sampling_rate": [None, Interval(numbers.Integral, 1)],
    "max_duration": [Options(("auto",)), None, Interval(numbers.Real, 0, closed="neither")],
}

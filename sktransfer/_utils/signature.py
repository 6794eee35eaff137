"""Keyword-only parameters that still take a positional call, with a warning, for one release.

The estimators take every parameter after the first by keyword, as
scikit-learn's do: a call reads the same whatever order the parameters are
declared in, and a parameter can be added anywhere. Code written when they
were positional keeps working for one more release through
:func:`positional_deprecated`, which warns and passes those values on by name.

Like every module of ``_utils``, it imports nothing from sktransfer outside
``_utils``; the release that ends the positional calls is the one that
removes the code aliases, :data:`sktransfer._utils.aliases.REMOVED_IN`.
"""

import functools
import inspect
import warnings

from .aliases import REMOVED_IN


def positional_deprecated(func):
    """Let ``func``'s keyword-only parameters still be passed by position, with a warning.

    ``func`` (usually an ``__init__``) declares its parameters keyword-only
    after a ``*``. A call that passes more positional values than ``func``
    has positional parameters gets a ``FutureWarning`` naming the parameters
    to pass by keyword, and those values are passed by name, in the declared
    order. A call that uses keywords is passed through untouched.

    The wrapper keeps ``func``'s name and docstring and sets ``__wrapped__``,
    so ``inspect.signature`` (and with it scikit-learn's ``get_params``,
    ``clone`` and ``repr``) sees ``func``'s own keyword-only signature.

    Parameters
    ----------
    func : callable
        A function whose keyword-only parameters used to be positional.

    Returns
    -------
    callable

    Examples
    --------
    >>> import warnings
    >>> @positional_deprecated
    ... def scale(x, *, factor=2.0, shift=0.0):
    ...     return x * factor + shift
    >>> scale(1.0, factor=3.0)
    3.0
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     scale(1.0, 3.0, 1.0)
    4.0
    >>> print(caught[0].message)  # doctest: +ELLIPSIS
    Pass factor, shift to scale by keyword (factor=..., shift=...): passing them by position ...
    """
    params = inspect.signature(func).parameters.values()
    positional = [p.name for p in params
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keyword_only = [p.name for p in params if p.kind == p.KEYWORD_ONLY]

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        extra = len(args) - len(positional)
        if extra <= 0 or extra > len(keyword_only):
            # Keywords only, or too many values even for the old signature
            # (then Python's own error is the clearest one).
            return func(*args, **kwargs)
        # The class called, not where __init__ is defined: a subclass that
        # inherits it names itself.
        owner = (type(args[0]).__name__ if func.__name__ == "__init__"
                 else func.__qualname__)
        names = keyword_only[:extra]
        given_twice = [name for name in names if name in kwargs]
        if given_twice:
            raise TypeError(f"{owner} got multiple values for {', '.join(given_twice)}")
        warnings.warn(
            f"Pass {', '.join(names)} to {owner} by keyword "
            f"({', '.join(f'{name}=...' for name in names)}): passing them by position is "
            f"deprecated and fails from sktransfer {REMOVED_IN}.",
            FutureWarning, stacklevel=2)
        kwargs.update(zip(names, args[len(positional):]))
        return func(*args[:len(positional)], **kwargs)

    return wrapper

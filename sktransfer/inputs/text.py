"""Text as samples: a list of strings, each one checked before any tokenizer sees it."""

import numpy as np


def text_input(X):
    """``X`` as a list of strings, refused unless every item is one a tokenizer can encode.

    Examples
    --------
    >>> text_input(["a cat", "a dog"])
    ['a cat', 'a dog']
    """
    if isinstance(X, np.ndarray) and X.dtype.kind not in "UO":
        raise ValueError(
            f"a text backbone takes a list of strings; got a numeric array of shape {X.shape}"
        )
    items = list(X)
    for i, item in enumerate(items):
        _check_text(i, item)
    return items


def _check_text(i, item):
    """Refuse item ``i`` of X unless it is a string a tokenizer can encode."""
    if not isinstance(item, str):
        missing = item is None or (isinstance(item, float) and item != item)
        raise ValueError(
            f"a text backbone takes a list of strings; item {i} has type "
            f"{type(item).__name__}: {item!r:.60}" + (" (a missing value?)" if missing else "")
        )
    if item.isascii():  # constant time; only other strings are encoded to check them
        return
    try:
        item.encode("utf-8")
    except UnicodeEncodeError as exc:
        # lone surrogates, e.g. from bytes decoded with errors="surrogateescape"
        raise ValueError(
            f"item {i} is not valid Unicode text ({exc.reason}: {exc.object[exc.start]!r} at "
            f"position {exc.start} of {item!r:.60}); decode the bytes with "
            "errors='replace', or remove the character."
        ) from None

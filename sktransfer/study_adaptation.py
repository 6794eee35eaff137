"""Old path of :mod:`sktransfer.study.adaptation` (a code alias, removed in a later release).

See :data:`sktransfer._utils.aliases.MOVED`.
"""

from ._utils.aliases import warn_moved

warn_moved(__name__)

from .study.adaptation import ADAPTATION_METHODS, WithSource, adaptation_method  # noqa: E402

__all__ = ["ADAPTATION_METHODS", "WithSource", "adaptation_method"]

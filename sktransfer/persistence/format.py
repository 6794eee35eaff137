"""Moved to :mod:`sktransfer.saving.format`; this old path warns and is removed in 0.3.0.

A code alias (see :data:`sktransfer._utils.aliases.MOVED`): model files
never name this module, so nothing saved depends on it.
"""

from .._utils.aliases import warn_moved

warn_moved(__name__)

from ..saving.format import *  # noqa: E402,F401,F403  (after the warning, on purpose)
from ..saving.format import __all__  # noqa: E402

"""Collection settings for the whole repository (tests/ and the doctests of sktransfer/).

The code aliases of ``sktransfer._utils.aliases.MOVED`` warn when imported,
which ``--doctest-modules`` would do for each: they hold no doctest, and
``tests/test_aliases.py`` checks their warnings on purpose.
"""

import os

from sktransfer._utils.aliases import MOVED

collect_ignore = [os.path.join(*name.split(".")) + ".py" for name in MOVED
                  if os.path.isfile(os.path.join(*name.split(".")) + ".py")]

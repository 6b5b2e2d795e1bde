"""One name, two distributions: this ``dogpile`` and dogpile.cache's.

dogpile.cache (and dogpile.core before it) also installs a top-level
package named ``dogpile``.  pip does not stop two distributions from
writing into one folder: installed into the same environment, their files
are merged into one ``site-packages/dogpile/``, and whichever was installed
last owns ``dogpile/__init__.py``.  The other one then fails later, far
from the cause (an ImportError or AttributeError from inside either
library).

When this package's ``__init__`` is the one that runs, it can tell: the
other distribution's subpackage sits beside it.  One ``stat`` per name is
the whole cost, so ``import dogpile`` stays fast; reading
``importlib.metadata`` instead would scan every ``sys.path`` entry on every
import.  (When dogpile.cache's ``__init__`` won, none of this code runs;
the README's install section is the warning for that case.)
"""

import os
import warnings

# Subpackages that the other distributions put under dogpile/.
_OTHERS = (
    ("cache", "dogpile.cache"),
    ("core", "dogpile.core"),
)


class DogpileCacheConflictWarning(UserWarning):
    """This ``dogpile`` shares its package directory with dogpile.cache's
    (or dogpile.core's) ``dogpile``: the two distributions cannot share one
    environment."""


def warn_if_shared(package_dir: str) -> None:
    """Warn once if another distribution's files share ``package_dir``.

    Called once, from ``dogpile/__init__.py`` while it is being imported;
    the warning points at the line that imported dogpile.
    """
    found = [dist for sub, dist in _OTHERS if os.path.isdir(os.path.join(package_dir, sub))]
    if not found:
        return
    others = " and ".join(found)
    warnings.warn(
        f"dogpile and {others} are installed into the same directory ({package_dir}): "
        f"both distributions install a top-level package named 'dogpile', so pip merged "
        f"their files and either may fail to import. Install them into separate virtual "
        f"environments: in this one, `pip uninstall dogpile {' '.join(found)}`, then "
        f"reinstall only the one it needs.",
        DogpileCacheConflictWarning,
        # warn_if_shared -> dogpile/__init__.py -> the importing line
        # (the import machinery's own frames are skipped by warnings).
        stacklevel=3,
    )

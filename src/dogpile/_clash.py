"""One name, two distributions: this ``dogpile`` and dogpile.cache's.

dogpile.cache also installs a top-level package named ``dogpile``.  pip
lets both write into one ``site-packages/dogpile/``; their only shared files
are ``__init__.py`` and ``py.typed``, so whichever was installed last owns
``dogpile/__init__.py``.  With this project's (installed after dogpile.cache)
everything works: dogpile.cache's region takes ``Lock`` and
``NeedRegenerationException`` from it and so runs on this project's Lock
(``tests/test_with_dogpile_cache.py``).  Nothing is said then.

It is broken when this project's modules are imported under an
``__init__`` that is not this project's: dogpile.cache's (installed or
upgraded after this project), or none at all (``pip uninstall`` of either
distribution removes the shared ``__init__.py``).  Importing this module
checks that, at the cost of a dictionary look-up, and warns
(DogpileCacheConflictWarning) with the way out.  ``_errors`` imports it, so
every module of this project that may be imported on its own checks.
"""

import sys
import warnings

# pip's name for this project, as the README installs it.
_REINSTALL = "pip install --pre --force-reinstall --no-deps dogpile"


class DogpileCacheConflictWarning(UserWarning):
    """This project's modules are imported, but ``dogpile/__init__.py`` is
    dogpile.cache's or missing: both distributions install a top-level
    package named ``dogpile`` and the last one installed owns it."""


def _check_package() -> None:
    package = sys.modules.get(__package__ or "dogpile")
    if package is None:
        return
    if getattr(package, "__file__", None) is None:
        problem = (
            "has no __init__.py (a `pip uninstall` of dogpile or dogpile.cache removed "
            "the one both of them install)"
        )
    elif getattr(getattr(package, "Lock", None), "__module__", None) == "dogpile.lock":
        problem = (
            "has dogpile.cache's __init__.py (dogpile.cache was installed or upgraded after "
            "this dogpile), so `import dogpile` is dogpile.cache's package"
        )
    else:
        return  # this project's __init__ is running
    where = list(getattr(package, "__path__", []) or ["?"])[0]
    warnings.warn(
        f"the dogpile package in {where} {problem}: this project's dogpile is broken there. "
        f"Reinstall it: `{_REINSTALL}` (installed last, it owns __init__.py, and "
        f"dogpile.cache, if installed, runs on its Lock).",
        DogpileCacheConflictWarning,
        stacklevel=2,
    )


_check_package()

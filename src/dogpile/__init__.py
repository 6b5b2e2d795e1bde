"""dogpile: a lock that lets one caller regenerate an expired value while
every other caller keeps serving the previous one.

This module is the only place that chooses between the compiled core
(``dogpile._core``) and its pure-Python twin (``dogpile._core_py``):
the compiled one when it imports, the pure one on other interpreters or
when the environment variable ``DOGPILE_NO_EXTENSIONS`` is non-empty.
``IMPLEMENTATION`` says which one won.
"""

import os as _os
import sys as _sys
from typing import TYPE_CHECKING

from ._clash import DogpileCacheConflictWarning as DogpileCacheConflictWarning
from ._errors import LockError, LockTimeout, NeedRegenerationException

__version__ = "1.0.0a1"

if TYPE_CHECKING:
    from ._core_py import (
        Dogpile,
        Lock,
        NameRegistry,
        ReadWriteMutex,
        SyncReaderDogpile,
    )

    IMPLEMENTATION: str
elif _os.environ.get("DOGPILE_NO_EXTENSIONS") or _sys.implementation.name != "cpython":
    from ._core_py import Dogpile, Lock, NameRegistry, ReadWriteMutex, SyncReaderDogpile

    IMPLEMENTATION = "python"
else:
    try:
        from ._core import Dogpile, Lock, NameRegistry, ReadWriteMutex, SyncReaderDogpile
    except ImportError:
        from ._core_py import Dogpile, Lock, NameRegistry, ReadWriteMutex, SyncReaderDogpile

        IMPLEMENTATION = "python"
    else:
        IMPLEMENTATION = "cython"

__all__ = [
    "Dogpile",
    "SyncReaderDogpile",
    "NeedRegenerationException",
    "NameRegistry",
    "ReadWriteMutex",
    "LockError",
    "LockTimeout",
    "Lock",
    "IMPLEMENTATION",
    "__version__",
]

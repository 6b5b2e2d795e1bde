"""dogpile: a lock that lets one caller regenerate an expired value while
every other caller keeps serving the previous one.

This module is the only place that chooses between the compiled core
(``dogpile._core``) and its pure-Python twin (``dogpile._core_py``):
the compiled one when it imports, the pure one on other interpreters or
when the environment variable ``DOGPILE_NO_EXTENSIONS`` is non-empty.
``IMPLEMENTATION`` says which one won.  ``_load_core(name)`` maps a name
to its module, here and for whatever else needs a core by name (the demo's
``--pure``, the tests).
"""

import importlib as _importlib
import os as _os
import sys as _sys
from types import ModuleType as _ModuleType
from typing import TYPE_CHECKING
from typing import Tuple as _Tuple

from ._clash import DogpileCacheConflictWarning as DogpileCacheConflictWarning
from ._errors import LockError, LockTimeout, NeedRegenerationException

__version__ = "1.0.0a1"

_CORE_MODULES = {"cython": "dogpile._core", "python": "dogpile._core_py"}


def _load_core(implementation: str) -> _ModuleType:
    """The core module of ``implementation``: ``"cython"`` (``dogpile._core``)
    or ``"python"`` (``dogpile._core_py``).

    The choice below, the demo's ``--pure`` and the tests' ``impl`` fixture
    all load a core through here, so that a name means one module everywhere.
    (The demo cannot set ``DOGPILE_NO_EXTENSIONS`` for itself: ``python -m
    dogpile`` has imported this package, and so chosen, before it reads its
    arguments.)"""
    try:
        name = _CORE_MODULES[implementation]
    except KeyError:
        raise ValueError(
            f"unknown dogpile implementation {implementation!r}: expected one of "
            f"{', '.join(map(repr, _CORE_MODULES))}"
        ) from None
    return _importlib.import_module(name)


def _choose_core() -> _Tuple[str, _ModuleType]:
    """The implementation ``import dogpile`` uses, and its core module."""
    if _os.environ.get("DOGPILE_NO_EXTENSIONS") or _sys.implementation.name != "cpython":
        return "python", _load_core("python")
    try:
        return "cython", _load_core("cython")
    except ImportError:
        return "python", _load_core("python")


if TYPE_CHECKING:
    from ._core_py import (
        Dogpile,
        Lock,
        NameRegistry,
        ReadWriteMutex,
        SyncReaderDogpile,
    )

    IMPLEMENTATION: str
else:
    # Not named ``_core``: importing dogpile._core binds that name on this
    # package, and it must stay the compiled module.
    IMPLEMENTATION, _chosen_core = _choose_core()
    Dogpile = _chosen_core.Dogpile
    Lock = _chosen_core.Lock
    NameRegistry = _chosen_core.NameRegistry
    ReadWriteMutex = _chosen_core.ReadWriteMutex
    SyncReaderDogpile = _chosen_core.SyncReaderDogpile

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

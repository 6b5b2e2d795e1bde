"""Types of the compiled core (``_core.pyx``) for type checkers.

The compiled classes have the same names, signatures and behaviour as the
pure-Python twin's, which is annotated and is the readable specification;
so the types are the twin's, re-exported, and cannot drift from it.
"""

from ._core_py import Dogpile as Dogpile
from ._core_py import Lock as Lock
from ._core_py import NameRegistry as NameRegistry
from ._core_py import ReadWriteMutex as ReadWriteMutex
from ._core_py import SyncReaderDogpile as SyncReaderDogpile

__all__ = ["Dogpile", "SyncReaderDogpile", "Lock", "NameRegistry", "ReadWriteMutex"]

"""The import path of dogpile 0.2.2: ``from dogpile.readwrite_lock import ReadWriteMutex``."""

from . import LockError, ReadWriteMutex

__all__ = ["ReadWriteMutex", "LockError"]

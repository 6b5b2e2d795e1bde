"""The import path of dogpile 0.2.2: ``from dogpile.dogpile import Dogpile``."""

from . import Dogpile, NeedRegenerationException, SyncReaderDogpile

__all__ = ["Dogpile", "SyncReaderDogpile", "NeedRegenerationException"]

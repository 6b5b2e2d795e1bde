"""The import path of dogpile 0.2.2: ``from dogpile.nameregistry import NameRegistry``."""

from . import NameRegistry

__all__ = ["NameRegistry"]

"""Exceptions shared by both implementations.

They live apart from either implementation so that ``except
dogpile.NeedRegenerationException`` catches what both raise, whichever one
``import dogpile`` chose.
"""

# Every module of this project imports this one: under an __init__.py that
# is not this project's (dogpile.cache's, or none), _clash says so.
from . import _clash  # noqa: F401


class NeedRegenerationException(Exception):
    """Raised by a ``value_fn`` or ``value_and_created_fn`` to say that there
    is no value: the Dogpile treats it as never created and creates it."""


class LockError(Exception):
    """A lock was used wrongly: released when not held, or taken again by
    the thread that is already inside it."""


class LockTimeout(LockError):
    """A caller waited ``wait_timeout`` seconds for a value that another
    caller was creating, and gave up."""

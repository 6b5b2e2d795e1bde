"""NameRegistry and ReadWriteMutex of the Python twin (exported by
``_core_py``, their public home), and the base that gives the twin's
objects their state before ``__init__``."""

import _thread
import threading
import weakref
from typing import Any, Callable, Optional

from . import _threads
from ._checks import check_callable
from ._errors import LockError


class _StateFirst:
    """Gives an instance its whole state before ``__init__`` runs, as the
    compiled core's ``__cinit__`` does: a subclass whose ``__init__`` skips
    the base one then gets a clear error (or a working object), not an
    AttributeError from deep inside.  A base class rather than a
    ``__new__`` in each class, so that inspect.signature() still reads
    each class's ``__init__``."""

    __slots__ = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        self = super().__new__(cls)
        self._fresh_state()
        return self

    def _fresh_state(self) -> None:
        raise NotImplementedError


class NameRegistry(_StateFirst):
    """Keeps one object per identifier for as long as anything references it.

    ``get(identifier, *args, **kw)`` returns that object, calling
    ``creator(identifier, *args, **kw)`` to make it when there is none; the
    entry goes away once the object is no longer referenced elsewhere, so
    the object must support weak references.
    """

    __slots__ = ("creator", "_values", "_mutex", "_made_with", "_generation", "__weakref__")

    def _fresh_state(self) -> None:
        self.creator: Callable[..., Any] = None  # type: ignore[assignment]  # until __init__
        self._values: dict[Any, weakref.ref[Any]] = {}
        # Reentrant: a creator may look up another identifier.
        self._mutex = threading.RLock()
        self._made_with = _thread.allocate_lock
        self._generation = _threads.fork_generation

    def __init__(self, creator: Callable[..., Any]) -> None:
        check_callable("creator", creator)
        self.creator = creator

    def get(self, identifier: Any, *args: Any, **kw: Any) -> Any:
        """Return the object for ``identifier``, creating it if needed."""
        ref = self._values.get(identifier)
        if ref is not None:
            obj = ref()
            if obj is not None:
                return obj
        return self._sync_get(identifier, args, kw)

    def _sync_get(self, identifier: Any, args: Any, kw: Any) -> Any:
        if (
            _thread.allocate_lock is not self._made_with
            or self._generation != _threads.fork_generation
        ):
            # gevent or eventlet patched threading after this registry was
            # made: its RLock belongs to the OS thread, which every greenlet
            # shares, so it would let them all in at once.  A new one, made
            # from the patched module, tells them apart.  (Nothing holds the
            # old one: every acquisition since the patching came here first.)
            # Or this is a forked child, where a parent thread that was
            # inside the creator holds the old one for ever.
            with _threads._fork_guard:
                # Checked again: the first thread to renew must stay the only one.
                if (
                    _thread.allocate_lock is not self._made_with
                    or self._generation != _threads.fork_generation
                ):
                    self._mutex = threading.RLock()
                    self._made_with = _thread.allocate_lock
                    self._generation = _threads.fork_generation
        with self._mutex:
            ref = self._values.get(identifier)
            if ref is not None:
                obj = ref()
                if obj is not None:
                    return obj
            obj = self.creator(identifier, *args, **kw)
            try:
                self._values[identifier] = weakref.ref(
                    obj, _Forget(self._values, identifier)
                )
            except TypeError:
                raise TypeError(
                    "NameRegistry's creator must return an object that "
                    f"supports weak references, not {type(obj).__name__!r}"
                ) from None
            return obj

    def __len__(self) -> int:
        return len(self._values)

    def __reduce__(self) -> Any:
        raise _not_copyable(self)


try:
    from _weakref import _remove_dead_weakref  # type: ignore[attr-defined]  # not in typeshed
except ImportError:  # pragma: no cover - every CPython 3.9+ has it

    def _remove_dead_weakref(d: Any, key: Any) -> None:
        ref = d.get(key)
        if ref is not None and ref() is None:
            del d[key]


def _not_copyable(obj: Any) -> TypeError:
    # copy.copy() of a lock would share or duplicate its state; pickle
    # cannot carry a lock to another process.
    return TypeError(
        f"a {type(obj).__name__} cannot be copied or pickled: its callers share its lock "
        "and state; share this one, or make a new one"
    )


class _Forget:
    """Weakref callback that drops a dead entry.  It holds the dict, not the
    registry, so a registry can be collected while its objects live on; it
    removes the key only while it still maps to a dead reference, so a
    newer object for the same identifier is never dropped."""

    __slots__ = ("_values", "_key")

    def __init__(self, values: Any, key: Any) -> None:
        self._values = values
        self._key = key

    def __call__(self, ref: Any) -> None:
        _remove_dead_weakref(self._values, self._key)


class ReadWriteMutex:
    """A lock that many readers or one writer can hold.

    Writers are preferred: once a writer waits, new readers wait behind it,
    so a stream of readers cannot starve it.  A thread must not take a read
    lock again while it holds one if a writer may be waiting.
    """

    __slots__ = ("_cond", "_readers", "_writer", "_writers_waiting", "__weakref__")

    def __init__(self) -> None:
        # Made before gevent or eventlet patched threading, this still
        # waits cooperatively after: Condition.wait() sleeps on a lock it
        # makes from threading's (patched) _allocate_lock at each wait, and
        # its own lock is held only between waits, never across a yield.
        # Owners are threading.get_ident() at each call: the greenlet.
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: Optional[int] = None
        self._writers_waiting = 0

    def __reduce__(self) -> Any:
        raise _not_copyable(self)

    def acquire_read_lock(self, wait: bool = True) -> bool:
        """Take a read lock; with ``wait=False`` return False if busy."""
        with self._cond:
            while self._writer is not None or self._writers_waiting:
                if not wait:
                    return False
                self._cond.wait()
            self._readers += 1
            return True

    def release_read_lock(self) -> None:
        """Release one read lock."""
        with self._cond:
            if self._readers <= 0:
                raise LockError("release_read_lock(): no read lock is held")
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    def acquire_write_lock(self, wait: bool = True) -> bool:
        """Take the write lock; with ``wait=False`` return False if busy."""
        me = threading.get_ident()
        with self._cond:
            if self._writer is None and self._readers == 0:
                self._writer = me
                return True
            if not wait:
                return False
            self._writers_waiting += 1
            try:
                while self._writer is not None or self._readers:
                    self._cond.wait()
            except BaseException:
                # Interrupted: the readers this writer held back may go on.
                self._writers_waiting -= 1
                self._cond.notify_all()
                raise
            self._writers_waiting -= 1
            self._writer = me
            return True

    def release_write_lock(self) -> None:
        """Release the write lock held by this thread."""
        with self._cond:
            if self._writer != threading.get_ident():
                raise LockError(
                    "release_write_lock(): this thread does not hold the write lock"
                )
            self._writer = None
            self._cond.notify_all()

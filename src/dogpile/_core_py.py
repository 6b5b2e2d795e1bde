"""The dogpile lock in pure Python.

This is the readable specification of the compiled core in ``_core.pyx``:
same classes, same signatures, same docstrings, same behaviour.  Where the
two differ, one of them has a bug.  ``import dogpile`` picks one of them.

Here are the public classes and the fresh path; the rules they follow are
in ``_rules`` (shared with ``dogpile.aio``), the waiting and creating (the
slow path) in ``_threads``, NameRegistry and ReadWriteMutex in
``_registry_py``.
"""

import sys
import threading
from time import time as _now
from typing import Any, Callable, Dict, Optional

from . import _lock_py, _threads
from ._checks import (
    check_acquire_args,
    check_callable,
    check_executor,
    check_lock,
    check_lock_timeout,
    createdtime_seconds,
    early_refresh_beta,
    expiretime_public,
    expiretime_seconds,
    not_initialised,
    unpack_pair,
    wait_timeout_seconds,
)
from ._errors import NeedRegenerationException
from ._registry_py import NameRegistry, ReadWriteMutex, _not_copyable, _StateFirst
from ._rules import INF as _INF
from ._rules import NAN as _NAN
from ._rules import NO_VALUE as _NO_VALUE
from ._rules import Attempt, Counters, early_due, is_expired, pair

__all__ = [
    "Dogpile",
    "SyncReaderDogpile",
    "Lock",
    "NameRegistry",
    "ReadWriteMutex",
]

# The largest int a Lock keeps as it is (beyond it, no float compares).
_FLOAT_MAX = sys.float_info.max

# The expiry rule, as the compiled core's module function of the same name
# (dogpile.aio and the tests read it from either core).
_is_expired = is_expired
_pair = pair


def _optional_fns_ok(value_fn: Any, value_and_created_fn: Any) -> bool:
    if value_fn is None:
        return callable(value_and_created_fn)
    return value_and_created_fn is None and callable(value_fn)


def _seconds(expiretime: Any) -> float:
    if expiretime is None:
        return _INF
    if type(expiretime) is float and expiretime >= 0:  # false for nan
        return expiretime
    return expiretime_seconds(expiretime)


class _DogpileState(_StateFirst, Counters):
    """What a Dogpile holds, given whole before ``__init__`` runs."""

    # The value and its times; the lock, what it was made in and the attempt
    # waiters share; the options; the last creation's duration (XFetch).
    __slots__ = (
        "_createdtime", "_expiretime", "_value",
        "_lock", "_custom_lock", "_lock_generation", "_attempt", "_serial", "_failure",
        "_retry_here",
        "_wait_timeout", "_background", "_beta", "_delta", "__weakref__",
    )

    def _reset(self, expiretime: float) -> None:
        self._expiretime = expiretime
        self._wait_timeout: Optional[float] = None
        self._lock: Any = threading.Lock()
        self._lock_generation = _threads.fork_generation
        self._custom_lock = self._retry_here = False
        self._background: Any = None
        self._attempt: Optional[Attempt] = None
        # How many attempts were published, and the last one that failed
        # (until the next is published): see _threads.create.
        self._serial = 0
        self._failure: Optional[Attempt] = None
        self._beta = self._delta = 0.0
        self._value: Any = None
        self._createdtime = -1.0
        self._zero_counts()


class Dogpile(_DogpileState):
    """A lock that lets one caller create a value while every other caller
    keeps using the previous one.

    :param expiretime: seconds a created value stays fresh (int or float,
        >= 0), or None for never.
    :param init: if true, the value counts as created now.
    :param lock: an object with ``acquire()``, ``acquire(False)`` and
        ``release()`` (a cross-process mutex, say); default: a native mutex
        of the compiled core, or a ``threading.Lock``.
    :param wait_timeout: seconds a caller waits for a first value that
        another caller is creating before it gives up with LockTimeout;
        None waits as long as it takes.
    :param background: a ``concurrent.futures.Executor``: an expired value
        is recreated there while the caller that noticed it gets the stale
        value at once.
    :param early_refresh: beta of probabilistic early recomputation
        (XFetch); a caller may recreate a value shortly before it expires,
        more eagerly the longer creation takes (1.0 is the usual choice).
    """

    __slots__ = ()

    def _fresh_state(self) -> None:
        # expiretime nan until __init__ runs: a subclass that skips it gets
        # the error of not_initialised().
        self._reset(_NAN)

    def __init__(
        self,
        expiretime: Optional[float],
        init: bool = False,
        lock: Any = None,
        *,
        wait_timeout: Optional[float] = None,
        background: Any = None,
        early_refresh: Optional[float] = None,
    ) -> None:
        seconds = _seconds(expiretime)
        wait = wait_timeout_seconds(wait_timeout)
        if lock is not None:
            check_lock(lock)
            if wait is not None:
                check_lock_timeout(lock)
        check_executor(background)
        beta = early_refresh_beta(early_refresh)
        if self._expiretime != self._expiretime:  # nan: fresh from _fresh_state
            self._expiretime = seconds
        else:  # __init__ called again: start over, as the compiled core does
            self._reset(seconds)
        self._wait_timeout = wait
        if lock is not None:
            self._lock = lock
            self._custom_lock = True
        self._background = background
        self._beta = beta
        if init:
            self._createdtime = _now()

    @property
    def createdtime(self) -> float:
        """Epoch seconds at which the value was created; -1 when none."""
        return self._createdtime

    @createdtime.setter
    def createdtime(self, value: float) -> None:
        self._createdtime = createdtime_seconds(value)

    @property
    def expiretime(self) -> Optional[float]:
        """Seconds a value stays fresh, or None for never."""
        return expiretime_public(self._expiretime)

    @expiretime.setter
    def expiretime(self, value: Optional[float]) -> None:
        self._expiretime = expiretime_seconds(value)

    @property
    def is_expired(self) -> bool:
        """True when there is no value, or it is older than expiretime."""
        return _is_expired(self._createdtime, self._expiretime)

    @property
    def has_value(self) -> bool:
        """True once a value has been created."""
        return self._createdtime > 0

    def stats(self) -> Dict[str, int]:
        """Counts since construction: ``fresh`` hits, ``stale`` values
        served while another caller created, ``created`` (creator calls),
        ``waited`` (callers that blocked for a first value), ``failed``
        (creator exceptions), ``early`` refreshes and wait ``timeouts``."""
        return self._counts()

    def acquire(
        self,
        creator: Callable[[], Any],
        value_fn: Optional[Callable[[], Any]] = None,
        value_and_created_fn: Optional[Callable[[], Any]] = None,
    ) -> "_Acquisition":
        """Return a context manager whose ``as`` target is the current value.

        With no value, callers wait for the one that runs ``creator()`` and
        share its outcome: its value, or its exception raised in each.
        With an expired value, one caller runs ``creator()`` and every other
        one gets the stale value at once.

        ``value_fn()`` returns the stored value (or raises
        NeedRegenerationException when there is none).
        ``value_and_created_fn()`` returns ``(value, createdtime)`` and sets
        this Dogpile's createdtime; ``creator()`` then returns such a pair
        too.  With neither, the value is the one the last ``creator()``
        call through this Dogpile returned.
        """
        if not callable(creator) or (
            (value_fn is not None or value_and_created_fn is not None)
            and not _optional_fns_ok(value_fn, value_and_created_fn)
        ):
            check_acquire_args(creator, value_fn, value_and_created_fn)
        return _Acquisition(self, creator, value_fn, value_and_created_fn)

    def get(
        self,
        creator: Callable[[], Any],
        value_fn: Optional[Callable[[], Any]] = None,
        value_and_created_fn: Optional[Callable[[], Any]] = None,
    ) -> Any:
        """Return the value that ``acquire()`` would give its ``as`` target:
        the same arguments and rules, without a ``with`` block (the form for
        hot loops): ``value = d.get(creator)``."""
        if not callable(creator) or (
            (value_fn is not None or value_and_created_fn is not None)
            and not _optional_fns_ok(value_fn, value_and_created_fn)
        ):
            check_acquire_args(creator, value_fn, value_and_created_fn)
        return self._enter(creator, value_fn, value_and_created_fn)

    # -- the algorithm ------------------------------------------------------

    def _enter(
        self,
        creator: Callable[[], Any],
        value_fn: Optional[Callable[[], Any]],
        value_and_created_fn: Optional[Callable[[], Any]],
    ) -> Any:
        if value_and_created_fn is not None:
            try:
                value, createdtime = _pair(value_and_created_fn(), "value_and_created_fn")
            except NeedRegenerationException:
                value, createdtime = _NO_VALUE, -1.0
            self._createdtime = createdtime
        elif value_fn is not None:
            # The time before the value, as for the plain path below: a
            # value newer than its time is harmless, the reverse is not.
            createdtime = self._createdtime
            try:
                value = value_fn()
            except NeedRegenerationException:
                # Not stored in self: a creation may have finished since
                # value_fn looked, and its time must stand (the check under
                # the lock asks value_fn again).
                value, createdtime = _NO_VALUE, -1.0
        else:
            # createdtime before value: a creator stores the value first, so
            # a fresh time never pairs with an older value.
            createdtime = self._createdtime
            value = self._value
        # _is_expired, inlined: this is the fresh-hit path.
        if createdtime > 0:
            expiretime = self._expiretime
            age = _now() - createdtime if expiretime != _INF else 0.0
            if -expiretime <= age <= expiretime:
                if self._beta and early_due(age, expiretime, self._delta, self._beta):
                    return _threads.refresh_early(
                        self, creator, value_fn, value_and_created_fn, value, createdtime
                    )
                self._fresh += 1
                return value
        # No fresh value: the thread driver takes it from here.
        return _threads.create(self, creator, value_fn, value_and_created_fn, value, createdtime)

    def _exit(self) -> None:
        pass

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} expiretime={self.expiretime!r} "
            f"createdtime={self._createdtime!r}>"
        )

    def __reduce__(self) -> Any:
        raise _not_copyable(self)


# States of a creation attempt.
_PENDING, _CREATED, _FAILED, _ABANDONED = range(4)


class _Acquisition:
    """The context manager that Dogpile.acquire() returns."""

    __slots__ = ("_dogpile", "_creator", "_value_fn", "_value_and_created_fn")

    def __init__(
        self,
        dogpile: Dogpile,
        creator: Callable[[], Any],
        value_fn: Optional[Callable[[], Any]],
        value_and_created_fn: Optional[Callable[[], Any]],
    ) -> None:
        self._dogpile = dogpile
        self._creator = creator
        self._value_fn = value_fn
        self._value_and_created_fn = value_and_created_fn

    def __enter__(self) -> Any:
        return self._dogpile._enter(
            self._creator, self._value_fn, self._value_and_created_fn
        )

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._dogpile._exit()


class SyncReaderDogpile(Dogpile):
    """A Dogpile whose ``acquire()`` block also holds a read lock, so that a
    writer (``acquire_write_lock()``) can exclude every reader while it
    changes the value in place."""

    __slots__ = ("_rw",)

    def _fresh_state(self) -> None:
        Dogpile._fresh_state(self)
        self._rw = ReadWriteMutex()

    def __init__(
        self, expiretime: Optional[float], init: bool = False, lock: Any = None, **options: Any
    ) -> None:
        super().__init__(expiretime, init, lock, **options)

    @property
    def readwritelock(self) -> "ReadWriteMutex":
        """The ReadWriteMutex that acquire() reads under."""
        return self._rw

    def acquire(
        self,
        creator: Callable[[], Any],
        value_fn: Optional[Callable[[], Any]] = None,
        value_and_created_fn: Optional[Callable[[], Any]] = None,
    ) -> "_Acquisition":
        """Like Dogpile.acquire(), with the read lock held for the block."""
        return Dogpile.acquire(self, creator, value_fn, value_and_created_fn)

    def get(
        self,
        creator: Callable[[], Any],
        value_fn: Optional[Callable[[], Any]] = None,
        value_and_created_fn: Optional[Callable[[], Any]] = None,
    ) -> Any:
        """Like Dogpile.get(), returning once no writer holds the write lock
        (the read lock is taken and released, as by an empty block)."""
        value = Dogpile.get(self, creator, value_fn, value_and_created_fn)
        self._rw.release_read_lock()
        return value

    def acquire_write_lock(self) -> "_WriteLock":
        """Return a context manager that holds the write lock."""
        if self._expiretime != self._expiretime:  # nan: __init__ never ran
            raise not_initialised(self)
        return _WriteLock(self._rw)

    def _enter(
        self,
        creator: Callable[[], Any],
        value_fn: Optional[Callable[[], Any]],
        value_and_created_fn: Optional[Callable[[], Any]],
    ) -> Any:
        value = Dogpile._enter(self, creator, value_fn, value_and_created_fn)
        self._rw.acquire_read_lock()
        return value

    def _exit(self) -> None:
        self._rw.release_read_lock()


class _WriteLock:
    __slots__ = ("_rw",)

    def __init__(self, rw: "ReadWriteMutex") -> None:
        self._rw = rw

    def __enter__(self) -> None:
        self._rw.acquire_write_lock()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._rw.release_write_lock()


class Lock:
    """The dogpile.core 0.4 / dogpile.cache lock: ``with Lock(...) as value``.

    :param mutex: an object with ``acquire()``, ``acquire(False)`` and
        ``release()``.
    :param creator: returns a new ``(value, createdtime)``.
    :param value_and_created_fn: returns the stored ``(value, createdtime)``
        or raises NeedRegenerationException.
    :param expiretime: seconds a value stays fresh, or None for never.
    :param async_creator: if given, called with the (acquired) mutex instead
        of ``creator`` when a stale value exists; it must release the mutex
        itself, and the stale value is returned at once.
    """

    __slots__ = ("mutex", "creator", "value_and_created_fn", "_expiretime", "async_creator")

    def __init__(
        self,
        mutex: Any,
        creator: Callable[[], Any],
        value_and_created_fn: Callable[[], Any],
        expiretime: Optional[float],
        async_creator: Optional[Callable[[Any], Any]] = None,
    ) -> None:
        # Made for every use (``with Lock(...)``): the functions are
        # checked when they are first needed, before anything is locked.
        kind = expiretime.__class__
        # An int is kept as it is: it compares with a float age the same.
        # (False for nan, which _seconds then rejects, and for an int
        # beyond any float, which the compiled core cannot hold either.)
        if (kind is float or kind is int) and 0 <= expiretime <= _FLOAT_MAX:  # type: ignore[operator]
            self._expiretime: float = expiretime  # type: ignore[assignment]
        else:
            self._expiretime = _seconds(expiretime)
        self.mutex = mutex
        self.creator = creator
        self.value_and_created_fn = value_and_created_fn
        self.async_creator = async_creator

    @property
    def expiretime(self) -> Optional[float]:
        """Seconds a value stays fresh, or None for never."""
        # nan, as the compiled core reads, until __init__ or this setter ran
        return expiretime_public(getattr(self, "_expiretime", _NAN))

    @expiretime.setter
    def expiretime(self, value: Optional[float]) -> None:
        self._expiretime = _seconds(value)

    def __enter__(self) -> Any:
        # An unset slot is how a Lock whose __init__ never ran shows here:
        # the check waits for the error, off the path of every use.
        try:
            pair = self.value_and_created_fn()
        except NeedRegenerationException:
            return _lock_py.lock_create(self, _NO_VALUE, -1.0)
        except TypeError:
            if not hasattr(self, "_expiretime"):
                raise not_initialised(self, "Lock") from None
            check_callable("value_and_created_fn", self.value_and_created_fn)
            raise
        except AttributeError:
            if not hasattr(self, "_expiretime"):
                raise not_initialised(self, "Lock") from None
            raise
        # _pair and _is_expired inlined, with attribute reads in place of
        # builtin calls: this is the fresh-hit path, and every call counts
        # in Python.  (An infinite expiry needs no special case here.)
        if pair.__class__ is tuple:
            try:
                value, createdtime = pair
            except ValueError:
                value, createdtime = unpack_pair(pair, "value_and_created_fn")
            if createdtime.__class__ is not float or createdtime != createdtime:
                value, createdtime = unpack_pair(pair, "value_and_created_fn")
        else:
            value, createdtime = unpack_pair(pair, "value_and_created_fn")
        if createdtime > 0:
            try:  # free on 3.11+; one cheap instruction before
                expiretime = self._expiretime
            except AttributeError:  # __init__ never ran: lock_create says so
                return _lock_py.lock_create(self, value, createdtime)
            age = _now() - createdtime
            if -expiretime <= age <= expiretime:
                return value
        return _lock_py.lock_create(self, value, createdtime)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        pass


# Defined beside, to keep each module to one job; their public home is here,
# as in the compiled core.
NameRegistry.__module__ = ReadWriteMutex.__module__ = __name__

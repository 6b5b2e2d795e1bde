"""The dogpile lock in pure Python.

This is the readable specification of the compiled core in ``_core.pyx``:
same classes, same signatures, same docstrings, same behaviour.  Where the
two differ, one of them has a bug.  ``import dogpile`` picks one of them.
"""

import _thread
import copy
import logging
import math
import os
import sys
import threading
import weakref
from random import random as _random
from time import monotonic as _monotonic
from time import time as _now
from typing import Any, Callable, Dict, Optional

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
from ._errors import LockError, LockTimeout, NeedRegenerationException

__all__ = [
    "Dogpile",
    "SyncReaderDogpile",
    "Lock",
    "NameRegistry",
    "ReadWriteMutex",
]

_log = logging.getLogger("dogpile")

# No value yet (distinct from None, which is a value).
_NO_VALUE: Any = object()

# A forked child has one thread; a lock held by any other thread of the
# parent would never be released there.  Each Dogpile remembers the fork
# generation its default lock was made in and makes a new one when the
# generation has moved on (see Dogpile._mutex_now).
_fork_generation = 0
_fork_guard = threading.Lock()
# gevent's and eventlet's monkey-patching replace _thread.allocate_lock, and
# with it every lock threading makes from then on.  A lock made before (a
# Dogpile built at import, before a gunicorn gevent worker patches) blocks
# the whole OS thread, and every greenlet with it, so a change here also
# starts a new generation: the next caller to need the lock makes a new,
# patched one.  (The compiled core, whose lock is a word and not an object,
# decides at wait time instead; see _core.pyx.)
_lock_factory = _thread.allocate_lock


def _after_fork_in_child() -> None:
    global _fork_generation, _fork_guard
    _fork_generation += 1
    _fork_guard = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


_INF = float("inf")
# The expiretime of a Dogpile whose __init__ never ran: every freshness
# test fails on it, so every use reaches a check that raises.
_NAN = float("nan")
# The largest int a Lock keeps as it is (beyond it, no float compares).
_FLOAT_MAX = sys.float_info.max


def _is_expired(createdtime: float, expiretime: float) -> bool:
    if createdtime <= 0:
        return True
    if expiretime == _INF:
        return False
    age = _now() - createdtime
    # A creation time further ahead than the expiry time comes from a clock
    # that was stepped back or a host whose clock runs ahead: call it
    # expired, so one regeneration repairs it instead of waiting for the
    # clock to catch up.  (Written so that a nan expiretime is expired.)
    return not -expiretime <= age <= expiretime


def _optional_fns_ok(value_fn: Any, value_and_created_fn: Any) -> bool:
    if value_fn is None:
        return callable(value_and_created_fn)
    return value_and_created_fn is None and callable(value_fn)


def _pair(result: Any, source: str) -> Any:
    """``result`` as a ``(value, createdtime)`` pair; the exact tuple with a
    float time passes straight through, anything else through _checks."""
    if type(result) is tuple and len(result) == 2:
        createdtime = result[1]
        if type(createdtime) is float and createdtime == createdtime:  # not nan
            return result
    return unpack_pair(result, source)


def _seconds(expiretime: Any) -> float:
    if expiretime is None:
        return _INF
    if type(expiretime) is float and expiretime >= 0:  # false for nan
        return expiretime
    return expiretime_seconds(expiretime)


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


class Dogpile(_StateFirst):
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

    __slots__ = (
        "_createdtime",
        "_expiretime",
        "_value",
        "_lock",
        "_custom_lock",
        "_lock_generation",
        "_attempt",
        "_wait_timeout",
        "_background",
        "_beta",
        "_delta",
        "_fresh",
        "_stale",
        "_created",
        "_waited",
        "_failed",
        "_early",
        "_timeouts",
        "_retry_here",
        "__weakref__",
    )

    def _fresh_state(self) -> None:
        # expiretime nan until __init__ runs: a subclass that skips it gets
        # the error of not_initialised().
        Dogpile._reset(self, _NAN)

    def _reset(self, expiretime: float) -> None:
        self._expiretime = expiretime
        self._wait_timeout: Optional[float] = None
        self._lock: Any = threading.Lock()
        self._custom_lock = False
        self._background: Any = None
        self._beta = 0.0
        self._lock_generation = _fork_generation
        self._attempt: Optional[_Attempt] = None
        self._retry_here = False
        self._delta = 0.0
        self._fresh = self._stale = self._created = self._waited = 0
        self._failed = self._early = self._timeouts = 0
        self._value: Any = None
        self._createdtime = -1.0

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
        return {
            "fresh": self._fresh,
            "stale": self._stale,
            "created": self._created,
            "waited": self._waited,
            "failed": self._failed,
            "early": self._early,
            "timeouts": self._timeouts,
        }

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
                if self._beta and self._early_due(age, expiretime):
                    return self._refresh_early(
                        creator, value_fn, value_and_created_fn, value, createdtime
                    )
                self._fresh += 1
                return value
        return self._create(creator, value_fn, value_and_created_fn, value, createdtime)

    def _early_due(self, age: float, expiretime: float) -> bool:
        # XFetch: refresh when now - delta * beta * ln(U) >= created + expiry,
        # U uniform in (0, 1]; delta is how long the last creation took.
        delta = self._delta
        if delta <= 0 or expiretime == _INF:
            return False
        return age - delta * self._beta * math.log(1.0 - _random()) >= expiretime

    def _mutex_now(self) -> Any:
        global _fork_generation, _lock_factory
        if self._custom_lock or (
            self._lock_generation == _fork_generation and _thread.allocate_lock is _lock_factory
        ):
            return self._lock
        with _fork_guard:
            if _thread.allocate_lock is not _lock_factory:
                _lock_factory = _thread.allocate_lock
                _fork_generation += 1
            if self._lock_generation != _fork_generation:
                self._lock = threading.Lock()
                self._lock_generation = _fork_generation
            return self._lock

    def _wait_for(self, mutex: Any) -> bool:
        timeout = self._wait_timeout
        if timeout is None:
            mutex.acquire()
            return True
        return bool(mutex.acquire(True, timeout=timeout))

    def _create(
        self,
        creator: Callable[[], Any],
        value_fn: Optional[Callable[[], Any]],
        value_and_created_fn: Optional[Callable[[], Any]],
        value: Any,
        createdtime: float,
    ) -> Any:
        if self._expiretime != self._expiretime:  # nan: __init__ never ran
            raise not_initialised(self)
        mutex = self._mutex_now()
        prior = None
        if createdtime > 0 and value is not _NO_VALUE:
            # A stale value exists: whoever holds the lock is already
            # creating, so serve the stale value rather than wait.
            if not mutex.acquire(False):
                self._stale += 1
                return value
        elif not mutex.acquire(False):
            attempt = self._attempt
            if attempt is not None and attempt.generation != _fork_generation:
                # Left by a thread of the parent process: it will never
                # finish here, and its owner's ident may be reused.
                attempt = None
            if attempt is not None and attempt.owner == threading.get_ident():
                raise LockError(
                    "Dogpile.acquire() called again from inside its own creator: "
                    "waiting for the value would wait for this very call"
                )
            self._waited += 1
            if _log.isEnabledFor(logging.DEBUG):
                _log.debug("%r: no value, waiting for the creator", self)
            if not self._wait_for(mutex):
                self._timeouts += 1
                raise LockTimeout(
                    f"no value after waiting {self._wait_timeout} s (wait_timeout) "
                    "for another caller's creator"
                )
            if attempt is not None:
                prior = attempt.last()
                if prior.state == _CREATED or prior.state == _FAILED:
                    # The creation we waited for is over: share its outcome
                    # rather than run the creator again for each waiter.
                    mutex.release()
                    return prior.outcome()
                # Abandoned (its creator raised KeyboardInterrupt, say):
                # this caller creates, and the others waiting for the same
                # attempt share this one's outcome through prior.next.
        return self._locked(mutex, creator, value_fn, value_and_created_fn, value, None, prior)

    def _refresh_early(
        self,
        creator: Callable[[], Any],
        value_fn: Optional[Callable[[], Any]],
        value_and_created_fn: Optional[Callable[[], Any]],
        value: Any,
        createdtime: float,
    ) -> Any:
        mutex = self._mutex_now()
        if not mutex.acquire(False):
            self._fresh += 1
            return value
        self._early += 1
        return self._locked(mutex, creator, value_fn, value_and_created_fn, value, createdtime)

    def _locked(
        self,
        mutex: Any,
        creator: Callable[[], Any],
        value_fn: Optional[Callable[[], Any]],
        value_and_created_fn: Optional[Callable[[], Any]],
        value: Any,
        seen: Optional[float],
        prior: "Optional[_Attempt]" = None,
    ) -> Any:
        """Holding the lock: create unless someone else just did.  ``seen``
        is the creation time an early refresh saw (the value is fresh, so
        only a newer one means someone else refreshed); None otherwise.
        ``prior`` is an abandoned attempt whose waiters this one serves."""
        handed_off = False
        attempt = None
        try:
            # Published before the value is read again, so that a caller
            # arriving meanwhile waits for this attempt and shares its
            # outcome instead of running the creator once more after it.
            # (Here a thread switch between taking the lock and this line
            # can still let a caller wait without it; it then reads the
            # value again itself.  The compiled core runs no Python code in
            # between.)
            attempt = self._attempt = _Attempt()
            if prior is not None:
                prior.next = attempt
            if seen is not None and _log.isEnabledFor(logging.DEBUG):
                _log.debug("%r: refreshing early", self)
            if value_and_created_fn is not None:
                try:
                    value, createdtime = _pair(value_and_created_fn(), "value_and_created_fn")
                except NeedRegenerationException:
                    value, createdtime = _NO_VALUE, -1.0
                self._createdtime = createdtime
                if value is not _NO_VALUE and _done_by_another(createdtime, seen, self._expiretime):
                    return attempt.share(value)
                stale = value if createdtime > 0 else _NO_VALUE
            elif value_fn is not None:
                if _done_by_another(self._createdtime, seen, self._expiretime):
                    try:
                        return attempt.share(value_fn())
                    except NeedRegenerationException:
                        value = _NO_VALUE
                stale = value
            else:
                if _done_by_another(self._createdtime, seen, self._expiretime):
                    return attempt.share(self._value)
                stale = self._value if self._createdtime > 0 else _NO_VALUE
            if self._retry_here:
                # The last background job never ran: create here, once.
                self._retry_here = False
            elif stale is not _NO_VALUE and self._background is not None:
                handoff = _Handoff(mutex.release, self)
                try:
                    future = self._background.submit(
                        self._create_in_background, handoff, creator, value_fn, value_and_created_fn
                    )
                except RuntimeError:
                    # Shut down: create here instead, and make sure a job
                    # that got queued anyway never runs without the lock.
                    handoff.cancel()
                    _log.debug("%r: background executor refused the job", self)
                except BaseException:
                    # Maybe queued before the failure: whichever of this and
                    # the job comes first releases, once.
                    handed_off = True
                    handoff.release()
                    raise
                else:
                    handed_off = True
                    _release_when_done(future, handoff)
                    if seen is None:
                        self._stale += 1
                    return stale
            return self._run_creator(attempt, creator, value_fn, value_and_created_fn)
        finally:
            if attempt is not None:
                self._settle(attempt)
            if not handed_off:
                mutex.release()

    def _settle(self, attempt: "_Attempt") -> None:
        if attempt.state == _PENDING:
            # No outcome (the value functions raised, or the job went to
            # the background): whoever waited for it goes on to create.
            attempt.finish(_ABANDONED, None)
        if self._attempt is attempt:
            self._attempt = None

    def _run_creator(
        self,
        attempt: "_Attempt",
        creator: Callable[[], Any],
        value_fn: Optional[Callable[[], Any]],
        value_and_created_fn: Optional[Callable[[], Any]],
    ) -> Any:
        started = _monotonic()
        debug = False
        try:
            self._created += 1
            debug = _log.isEnabledFor(logging.DEBUG)
            if debug:
                _log.debug("%r: calling the creator", self)
            result = creator()
            if value_and_created_fn is not None:
                value, self._createdtime = _pair(result, "creator")
            else:
                value = result
                if value_fn is None:
                    self._value = value
                self._createdtime = _now()
        except Exception as exc:
            self._failed += 1
            attempt.finish(_FAILED, exc)
            if debug:
                _log.debug("%r: the creator failed: %r", self, exc)
            raise
        except BaseException:
            attempt.finish(_ABANDONED, None)
            raise
        else:
            attempt.finish(_CREATED, value)
            return value
        finally:
            self._delta = _monotonic() - started

    def _create_in_background(
        self,
        handoff: "_Handoff",
        creator: Callable[[], Any],
        value_fn: Optional[Callable[[], Any]],
        value_and_created_fn: Optional[Callable[[], Any]],
    ) -> None:
        if not handoff.start():
            return
        attempt = None
        try:
            attempt = self._attempt = _Attempt()
            self._run_creator(attempt, creator, value_fn, value_and_created_fn)
        except Exception:
            # Nobody waits on a background creation, so its failure would
            # go unseen; the next caller to find the value expired retries.
            _log.warning("%r: background creation failed", self, exc_info=True)
        finally:
            if attempt is not None:
                self._settle(attempt)
            handoff.release_logged()

    def _job_never_ran(self, future: Any) -> None:
        """A background job ended without running (a ProcessPoolExecutor
        that could not pickle it, a cancelled future): say so, and have the
        next caller that finds the value expired create it in place."""
        self._retry_here = True
        try:
            cancelled = future.cancelled()
            error = None if cancelled else future.exception(0)
        except Exception as exc:  # a future-like object that cannot say
            cancelled, error = False, exc
        if cancelled:
            _log.warning("%r: background creation was cancelled before it ran; the next "
                         "caller to find the value expired creates it", self)
        else:
            _log.warning("%r: background creation could not run; the next caller to "
                         "find the value expired creates it", self, exc_info=error)

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


class _Attempt:
    """One run of a creator, as seen by the callers waiting for it."""

    __slots__ = ("owner", "generation", "state", "result", "traceback", "next")

    def __init__(self) -> None:
        self.owner = threading.get_ident()
        self.generation = _fork_generation
        self.state = _PENDING
        self.result: Any = None
        self.traceback: Any = None
        # The attempt that took over when this one was abandoned.
        self.next: Optional[_Attempt] = None

    def finish(self, state: int, result: Any) -> None:
        self.result = result
        if state == _FAILED:
            self.traceback = result.__traceback__
        self.state = state

    def share(self, value: Any) -> Any:
        """Finish with a value found under the lock, and return it."""
        self.finish(_CREATED, value)
        return value

    def last(self) -> "_Attempt":
        """This attempt, or the one that finally took over from it."""
        attempt = self
        while attempt.state == _ABANDONED and attempt.next is not None:
            attempt = attempt.next
        return attempt

    def outcome(self) -> Any:
        """The creator's value, or its exception raised again."""
        if self.state == _FAILED:
            raise _raised_again(self.result, self.traceback)
        return self.result


def _raised_again(exc: BaseException, traceback: Any) -> BaseException:
    """What a waiter raises for the creator's exception: a copy of it with
    the creator's traceback.  The one object raised in many threads at once
    would gather every thread's frames in its traceback (keeping their
    locals alive), and each thread would see the others' stacks in it.  An
    exception that cannot be copied as its type is raised itself, with the
    creator's traceback."""
    try:
        again = _exception_copy(exc)
    except Exception:
        again = None
    if type(again) is not type(exc) or again is exc:
        return exc.with_traceback(traceback)
    again.__cause__ = exc.__cause__
    again.__context__ = exc.__context__
    again.__suppress_context__ = exc.__suppress_context__
    notes = getattr(exc, "__notes__", None)
    if type(notes) is list:
        # Its own list: a note a waiter adds is not the others'.
        again.__notes__ = list(notes)  # type: ignore[attr-defined]
    return again.with_traceback(traceback)


def _exception_copy(exc: BaseException) -> Any:
    """A copy of ``exc`` made without running a ``__init__`` written in
    Python: copy.copy would call it again with ``args``, and one that
    formats its own message (``super().__init__(f"failed: {code}")``) would
    format it twice, its side effects running once per waiter.  None when
    there is C-level state (an OSError's errno, set by its __init__) that
    only a built-in ``__init__`` knows how to set."""
    cls = type(exc)
    base = next(t for t in cls.__mro__ if not t.__flags__ & _HEAPTYPE)
    if cls.__init__ is base.__init__:  # type: ignore[misc]
        # No __init__ of its own: calling the built-in one again is how the
        # C-level state is remade.
        return copy.copy(exc)
    if base.__basicsize__ != BaseException.__basicsize__:
        return None
    again = cls.__new__(cls, *exc.args)
    if type(again) is not cls:
        return None
    again.args = exc.args
    state = exc.__dict__
    if state:
        again.__dict__.update(state)
    return again


_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement


# States of a handoff to a background job.
_HELD, _RUNNING, _RELEASED = range(3)


class _Handoff:
    """The creation lock, handed from the caller that found the value
    expired to a background job.  Released exactly once: by the job when it
    ends or, when the job never runs (cancelled, or the executor failed to
    start it), by its future's done callback."""

    __slots__ = ("_release", "_dogpile", "state")

    def __init__(self, release: Callable[[], Any], dogpile: Dogpile) -> None:
        self._release = release
        self._dogpile = dogpile
        self.state = _HELD

    def start(self) -> bool:
        """The job may run: the lock is still held for it."""
        if self.state != _HELD:
            return False
        self.state = _RUNNING
        return True

    def cancel(self) -> None:
        """The job must not run; the caller keeps the lock."""
        self.state = _RELEASED

    def release(self) -> None:
        if self.state != _RELEASED:
            self.state = _RELEASED
            self._release()

    def release_logged(self, *future: Any) -> None:
        """release() where no caller would see an error (a custom lock that
        may not be released from this thread, say).  Called with the future
        when its job is done, or never ran."""
        never_ran = self.state == _HELD and bool(future)
        try:
            self.release()
        except Exception:
            _log.warning("could not release a Dogpile's creation lock after a background "
                         "creation", exc_info=True)
        if never_ran:
            self._dogpile._job_never_ran(future[0])


def _release_when_done(future: Any, handoff: _Handoff) -> None:
    add_done_callback = getattr(future, "add_done_callback", None)
    if add_done_callback is not None:
        add_done_callback(handoff.release_logged)


def _done_by_another(createdtime: float, seen: Optional[float], expiretime: float) -> bool:
    """Under the lock: does the value no longer need creating?"""
    if _is_expired(createdtime, expiretime):
        return False
    return seen is None or createdtime != seen


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
            return self._create(_NO_VALUE, -1.0)
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
            except AttributeError:  # __init__ never ran: _create says so
                return self._create(value, createdtime)
            age = _now() - createdtime
            if -expiretime <= age <= expiretime:
                return value
        return self._create(value, createdtime)

    def _create(self, value: Any, createdtime: float) -> Any:
        if not hasattr(self, "_expiretime"):
            raise not_initialised(self, "Lock")
        mutex = self.mutex
        has_value = createdtime > 0 and value is not _NO_VALUE
        check_callable("creator", self.creator)
        check_callable("async_creator", self.async_creator, optional=True)
        # Not checked at construction: that would tax every fresh hit.  An
        # asyncio lock is refused before its acquire() returns a (truthy)
        # coroutine that would pass for the lock.
        check_lock(mutex, "mutex")
        try:
            if has_value:
                if not mutex.acquire(False):
                    return value
            else:
                mutex.acquire()
        except AttributeError:
            check_lock(mutex, "mutex")
            raise
        handed_off = False
        try:
            if not has_value:
                # We waited: another thread or process may have created
                # meanwhile.  Any pair counts as a value, whatever its time:
                # dogpile.cache's get_or_create_multi answers (payload, 0) to
                # have the mutex handed to its async_creator.  (An expired
                # value taken without waiting is not read again: that would
                # cost a backend round trip per regeneration.)
                try:
                    value, createdtime = _pair(
                        self.value_and_created_fn(), "value_and_created_fn"
                    )
                except NeedRegenerationException:
                    pass
                else:
                    if not _is_expired(createdtime, self._expiretime):
                        return value
                    has_value = True
            if has_value and self.async_creator is not None:
                self.async_creator(mutex)
                # Only now: if async_creator raised, the mutex is still ours.
                handed_off = True
                return value
            value, createdtime = _pair(self.creator(), "creator")
            return value
        finally:
            if not handed_off:
                _release(mutex)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        pass


def _release(mutex: Any) -> None:
    try:
        mutex.release()
    except AttributeError:
        check_lock(mutex, "mutex")
        raise


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
        self._generation = _fork_generation

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
        if _thread.allocate_lock is not self._made_with or self._generation != _fork_generation:
            # gevent or eventlet patched threading after this registry was
            # made: its RLock belongs to the OS thread, which every greenlet
            # shares, so it would let them all in at once.  A new one, made
            # from the patched module, tells them apart.  (Nothing holds the
            # old one: every acquisition since the patching came here first.)
            # Or this is a forked child, where a parent thread that was
            # inside the creator holds the old one for ever.
            with _fork_guard:
                # Checked again: the first thread to renew must stay the only one.
                if (
                    _thread.allocate_lock is not self._made_with
                    or self._generation != _fork_generation
                ):
                    self._mutex = threading.RLock()
                    self._made_with = _thread.allocate_lock
                    self._generation = _fork_generation
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

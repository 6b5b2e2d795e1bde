"""dogpile.aio: the dogpile lock for asyncio.

``AsyncDogpile`` and ``AsyncLock`` follow the rules of ``Dogpile`` and
``Lock``, for tasks instead of threads: with no value, tasks wait for one
creation and share its outcome; with an expired value, one task creates and
every other task gets the stale value at once, without awaiting anything
that can wait.  Creators and value functions may be plain functions or
coroutine functions: whatever they return that is awaitable (a coroutine, a
future, an object with ``__await__``) is awaited.

The expiry rule of the fresh path is the core's ``_is_expired``: the
compiled one when ``import dogpile`` chose it.  ``_build(core)`` makes the
classes over either core, so that the tests run them over both.

An AsyncDogpile serves one event loop at a time.  Its default lock is an
``asyncio.Lock`` made for the running loop; when the loop it was made for
has been closed (``asyncio.run()`` twice, a test per loop), the next slow
path makes a new one for the running loop.  Using it from a second loop
while the first is still open and running, or holds the lock, is a
RuntimeError that says so.
"""

import asyncio
import importlib
import logging
import math
import os
import sys
import types
import weakref
from functools import partial
from random import random as _random
from time import monotonic as _monotonic
from time import time as _now
from typing import Any, Callable, Dict, NamedTuple, Optional, Set, Tuple, Type

from . import IMPLEMENTATION
from ._aio_locks import (
    _acquire,
    _acquire_within,
    _check_async_lock,
    _check_loop_switch,
    _cleanups,  # noqa: F401 - the tests wait for it to empty
    _is_awaitable,
    _kind,
    _release,
    _release_later,
    _try_acquire_now,
    _try_acquirer,
)
from ._checks import (
    check_acquire_args,
    check_callable,
    createdtime_seconds,
    early_refresh_beta,
    expiretime_public,
    expiretime_seconds,
    unpack_pair,
    wait_timeout_seconds,
)
from ._errors import LockError, LockTimeout, NeedRegenerationException

__all__ = ["AsyncDogpile", "AsyncLock"]

_log = logging.getLogger("dogpile")

# No value yet (distinct from None, which is a value).
_NO_VALUE: Any = object()
_INF = math.inf

# The core that ``import dogpile`` chose (dogpile/__init__.py decides).
_CHOSEN_CORE = importlib.import_module(
    "dogpile._core" if IMPLEMENTATION == "cython" else "dogpile._core_py"
)


def _pair(result: Any, source: str) -> Tuple[Any, float]:
    """``result`` as a ``(value, createdtime)`` pair; the exact tuple with a
    float time passes straight through, anything else through _checks."""
    if type(result) is tuple and len(result) == 2:
        createdtime = result[1]
        if type(createdtime) is float and createdtime == createdtime:  # not nan
            return result
    return unpack_pair(result, source)


def _background_flag(background: Any) -> bool:
    if background is None or background is False:
        return False
    if background is True:
        return True
    raise TypeError(
        "background must be True or False for an AsyncDogpile (the creation runs as "
        f"a task of the running event loop), not {_kind(background)!r}"
    )


# -- one creation, as seen by the tasks waiting for it -------------------------------------

_PENDING, _CREATED, _FAILED, _ABANDONED = range(4)


class _Attempt:
    __slots__ = ("owner", "serial", "state", "result", "traceback")

    def __init__(self, owner: Any, serial: int) -> None:
        self.owner = owner
        self.serial = serial
        self.state = _PENDING
        self.result: Any = None
        self.traceback: Any = None

    def finish(self, state: int, result: Any) -> None:
        self.result = result
        self.state = state
        if state == _FAILED:
            self.traceback = result.__traceback__

    def outcome(self) -> Any:
        """The creator's value, or its exception raised again."""
        if self.state == _FAILED:
            # The creator's traceback each time: raising one exception
            # object in a thousand tasks would otherwise grow its traceback
            # by every task's frames.
            raise self.result.with_traceback(self.traceback)
        return self.result


# -- AsyncDogpile --------------------------------------------------------------------------


class _State:
    """Everything an AsyncDogpile holds.  Kept apart from the AsyncDogpile
    so that its cached acquisition (which refers to this, not to the
    AsyncDogpile) makes no reference cycle: an AsyncDogpile dies with its
    last reference."""

    __slots__ = (
        "expired",
        "createdtime",
        "expiretime",
        "value",
        "lock",
        "custom_lock",
        "lock_loop",
        "lock_pid",
        "try_acquire",
        "attempt",
        "serial",
        "waiting",
        "wait_timeout",
        "background",
        "tasks",
        "beta",
        "delta",
        "fresh",
        "stale",
        "created",
        "waited",
        "failed",
        "early",
        "timeouts",
        "name",
        "ready",
    )

    def __init__(self, expired: Callable[[float, float], bool], name: str) -> None:
        self.expired = expired
        self.name = name
        self.createdtime = -1.0
        self.expiretime = _INF
        self.value: Any = None
        # Up to Python 3.11, a done asyncio.Future whose result is
        # ``value`` (or None): what a fresh hit returns (_ReadyAcquisition).
        self.ready: Optional[asyncio.Future[Any]] = None
        self.lock: Any = None
        self.custom_lock = False
        self.lock_loop: Any = None  # weak reference to the default lock's loop
        self.lock_pid = 0  # the process that made it (see _check_loop_switch)
        self.try_acquire: Callable[[Any], Any] = _try_acquire_now
        self.attempt: Optional[_Attempt] = None
        self.serial = 0
        self.waiting = 0
        self.wait_timeout: Optional[float] = None
        self.background = False
        self.tasks: Set[asyncio.Task[Any]] = set()
        self.beta = 0.0
        self.delta = 0.0
        self.fresh = self.stale = self.created = self.waited = 0
        self.failed = self.early = self.timeouts = 0

    def __repr__(self) -> str:
        expiretime = expiretime_public(self.expiretime)
        return f"<{self.name} expiretime={expiretime!r} createdtime={self.createdtime!r}>"

    # -- the lock --------------------------------------------------------------------------

    def mutex(self) -> Any:
        if self.custom_lock:
            return self.lock
        loop = asyncio.get_running_loop()
        ref = self.lock_loop
        if ref is not None and ref() is loop:
            return self.lock
        return self.new_loop(loop)

    def busy(self) -> bool:
        """Is the lock held now?  Asked only of an in-loop lock, which
        answers at once; False means "try it" (see create(), which also
        makes the default lock anew for a new event loop)."""
        if self.try_acquire is not _try_acquire_now:
            return False
        if not self.custom_lock:
            ref = self.lock_loop
            if ref is None or ref() is not asyncio.get_running_loop():
                return False
        return bool(self.lock.locked())

    def new_loop(self, loop: asyncio.AbstractEventLoop) -> Any:
        old = self.lock_loop() if self.lock_loop is not None else None
        if self.lock is not None:
            _check_loop_switch(old, self.lock, self, self.lock_pid)
        if old is not None:
            _log.debug("%r: a new lock for event loop %r", self, loop)
        # Made inside the running loop: Python 3.9's asyncio.Lock binds to
        # the loop it is made in.
        self.lock = asyncio.Lock()
        self.lock_loop = weakref.ref(loop)
        self.lock_pid = os.getpid()
        # What belonged to the closed loop: its tasks will never finish.
        attempt = self.attempt
        if attempt is not None and attempt.state == _PENDING:
            attempt.finish(_ABANDONED, None)
        self.attempt = None
        self.waiting = 0
        self.tasks.clear()
        self.ready = None  # let the old loop go
        return self.lock

    # -- the algorithm ---------------------------------------------------------------------

    async def enter(
        self,
        creator: Callable[[], Any],
        value_fn: Optional[Callable[[], Any]],
        value_and_created_fn: Optional[Callable[[], Any]],
    ) -> Any:
        """The whole acquisition, for value functions and early refresh
        (the plain fresh hit is _PlainAcquisition.__aenter__)."""
        if value_and_created_fn is not None:
            try:
                result = value_and_created_fn()
                if _is_awaitable(result):
                    result = await result
                value, createdtime = _pair(result, "value_and_created_fn")
            except NeedRegenerationException:
                value, createdtime = _NO_VALUE, -1.0
            self.createdtime = createdtime
        elif value_fn is not None:
            # The time before the value: a value newer than its time is
            # harmless, the reverse is not.
            createdtime = self.createdtime
            try:
                value = value_fn()
                if _is_awaitable(value):
                    value = await value
            except NeedRegenerationException:
                # Not stored: a creation may have finished while value_fn
                # ran, and its time must stand (the check under the lock
                # asks value_fn again).
                value, createdtime = _NO_VALUE, -1.0
        else:
            createdtime = self.createdtime
            value = self.value
        if not self.expired(createdtime, self.expiretime):
            if self.beta and self.early_due(createdtime):
                return await self.refresh_early(
                    creator, value_fn, value_and_created_fn, value, createdtime
                )
            self.fresh += 1
            return value
        return await self.create(creator, value_fn, value_and_created_fn, value, createdtime)

    async def enter_plain(self, creator: Callable[[], Any]) -> Any:
        """``acquire(creator)`` when _ReadyAcquisition has no ready value:
        a fresh hit makes one for the next."""
        createdtime = self.createdtime
        value = self.value
        if not self.expired(createdtime, self.expiretime):
            future = asyncio.get_running_loop().create_future()
            future.set_result(value)
            self.ready = future
            self.fresh += 1
            return value
        if createdtime > 0 and self.busy():
            # The stale fall-through, one coroutine short of create().
            self.stale += 1
            return value
        return await self.create(creator, None, None, value, createdtime)

    def early_due(self, createdtime: float) -> bool:
        # XFetch: refresh when now - delta * beta * ln(U) >= created + expiry,
        # U uniform in (0, 1]; delta is how long the last creation took.
        delta = self.delta
        expiretime = self.expiretime
        if delta <= 0 or expiretime == _INF:
            return False
        age = _now() - createdtime
        return age - delta * self.beta * math.log(1.0 - _random()) >= expiretime

    async def create(
        self,
        creator: Callable[[], Any],
        value_fn: Optional[Callable[[], Any]],
        value_and_created_fn: Optional[Callable[[], Any]],
        value: Any,
        createdtime: float,
    ) -> Any:
        mutex = self.mutex()
        got = self.try_acquire(mutex)
        if got is not True and got is not False:
            got = await got
        if not got:
            if createdtime > 0 and value is not _NO_VALUE:
                # A stale value exists: whoever holds the lock is already
                # creating, so serve the stale value rather than wait.
                self.stale += 1
                return value
            shared = await self.wait(mutex)
            if shared is not None:
                return shared.outcome()
        return await self.locked(mutex, creator, value_fn, value_and_created_fn, value, None)

    async def wait(self, mutex: Any) -> Optional[_Attempt]:
        """No value, and another task creates: wait for the lock.  Return
        the finished creation whose outcome this task shares (the lock
        released again), or None with the lock held."""
        attempt = self.attempt
        if attempt is not None and attempt.state == _PENDING:
            if attempt.owner is asyncio.current_task():
                raise LockError(
                    "AsyncDogpile.acquire() called again from inside its own creator: "
                    "waiting for the value would wait for this very call"
                )
            first = attempt.serial
        else:
            first = self.serial + 1
        self.waited += 1
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug("%r: no value, waiting for the creator", self)
        self.waiting += 1
        try:
            timeout = self.wait_timeout
            if timeout is None:
                got = await _acquire(mutex)
            else:
                got = await _acquire_within(mutex, timeout)
        finally:
            self.waiting -= 1
            last = self.attempt
            if self.waiting <= 0 and last is not None and last.state != _PENDING:
                self.attempt = None  # nobody else waits for it: drop its value
        if not got:
            self.timeouts += 1
            raise LockTimeout(
                f"no value after waiting {timeout} s (wait_timeout) for another task's creator"
            )
        if last is not None and last.serial >= first and last.state in (_CREATED, _FAILED):
            # The creation this task waited for is over: share its outcome
            # rather than run the creator again for each waiter.  A creation
            # that was cancelled is no outcome: this task goes on to create.
            await _release(mutex)
            return last
        return None

    async def refresh_early(
        self,
        creator: Callable[[], Any],
        value_fn: Optional[Callable[[], Any]],
        value_and_created_fn: Optional[Callable[[], Any]],
        value: Any,
        createdtime: float,
    ) -> Any:
        mutex = self.mutex()
        got = self.try_acquire(mutex)
        if got is not True and got is not False:
            got = await got
        if not got:
            self.fresh += 1
            return value
        self.early += 1
        return await self.locked(mutex, creator, value_fn, value_and_created_fn, value, createdtime)

    def done_by_another(self, createdtime: float, seen: Optional[float]) -> bool:
        """Under the lock: does the value no longer need creating?"""
        if self.expired(createdtime, self.expiretime):
            return False
        return seen is None or createdtime != seen

    async def locked(
        self,
        mutex: Any,
        creator: Callable[[], Any],
        value_fn: Optional[Callable[[], Any]],
        value_and_created_fn: Optional[Callable[[], Any]],
        value: Any,
        seen: Optional[float],
    ) -> Any:
        """Holding the lock: create unless someone else just did.  ``value``
        is what this task saw before it took the lock; ``seen`` is the
        creation time an early refresh saw, None otherwise."""
        handed_off = False
        try:
            # Logged here, inside the try that releases the lock.
            if seen is not None and _log.isEnabledFor(logging.DEBUG):
                _log.debug("%r: refreshing early", self)
            if value_and_created_fn is not None:
                try:
                    result = value_and_created_fn()
                    if _is_awaitable(result):
                        result = await result
                    value, createdtime = _pair(result, "value_and_created_fn")
                except NeedRegenerationException:
                    value, createdtime = _NO_VALUE, -1.0
                self.createdtime = createdtime
                if value is not _NO_VALUE and self.done_by_another(createdtime, seen):
                    return value
                stale = value if createdtime > 0 else _NO_VALUE
            elif value_fn is not None:
                if self.done_by_another(self.createdtime, seen):
                    try:
                        value = value_fn()
                        if _is_awaitable(value):
                            value = await value
                        return value
                    except NeedRegenerationException:
                        value = _NO_VALUE
                stale = value
            else:
                if self.done_by_another(self.createdtime, seen):
                    return self.value
                stale = self.value if self.createdtime > 0 else _NO_VALUE
            if stale is not _NO_VALUE and self.background:
                self.start_background(mutex, creator, value_fn, value_and_created_fn)
                handed_off = True
                if seen is None:
                    self.stale += 1
                return stale
            return await self.run_creator(creator, value_fn, value_and_created_fn)
        finally:
            if not handed_off:
                await _release(mutex)

    async def run_creator(
        self,
        creator: Callable[[], Any],
        value_fn: Optional[Callable[[], Any]],
        value_and_created_fn: Optional[Callable[[], Any]],
    ) -> Any:
        self.serial += 1
        attempt = _Attempt(asyncio.current_task(), self.serial)
        started = _monotonic()
        debug = False
        try:
            # In the try, so that the finally settles the attempt whatever
            # happens from here on (even in the logging).
            self.attempt = attempt
            self.created += 1
            debug = _log.isEnabledFor(logging.DEBUG)
            if debug:
                _log.debug("%r: calling the creator", self)
            result = creator()
            if _is_awaitable(result):
                result = await result
            if value_and_created_fn is not None:
                value, self.createdtime = _pair(result, "creator")
            else:
                value = result
                if value_fn is None:
                    self.value = value
                    self.ready = None
                self.createdtime = _now()
        except Exception as exc:
            self.failed += 1
            attempt.finish(_FAILED, exc)
            if debug:
                _log.debug("%r: the creator failed: %r", self, exc)
            raise
        except BaseException:
            # Cancelled (or interrupted): no outcome to share; the tasks
            # that waited go on, and one of them creates.
            attempt.finish(_ABANDONED, None)
            if debug:
                _log.debug("%r: the creator was cancelled", self)
            raise
        else:
            attempt.finish(_CREATED, value)
            return value
        finally:
            self.delta = _monotonic() - started
            if self.waiting <= 0 and self.attempt is attempt:
                self.attempt = None  # nobody waits for it: drop its value

    def start_background(
        self,
        mutex: Any,
        creator: Callable[[], Any],
        value_fn: Optional[Callable[[], Any]],
        value_and_created_fn: Optional[Callable[[], Any]],
    ) -> None:
        started = [False]
        task = asyncio.ensure_future(
            self.create_in_background(mutex, started, creator, value_fn, value_and_created_fn)
        )
        # The event loop keeps only weak references to its tasks.
        self.tasks.add(task)
        task.add_done_callback(partial(self.background_done, mutex, started))
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug("%r: creating in the background", self)

    async def create_in_background(
        self,
        mutex: Any,
        started: "list[bool]",
        creator: Callable[[], Any],
        value_fn: Optional[Callable[[], Any]],
        value_and_created_fn: Optional[Callable[[], Any]],
    ) -> None:
        started[0] = True
        try:
            await self.run_creator(creator, value_fn, value_and_created_fn)
        except Exception:
            # Nobody awaits a background creation, so its failure would go
            # unseen; the next task to find the value expired tries again.
            _log.warning("%r: background creation failed", self, exc_info=True)
        finally:
            await _release(mutex)

    def background_done(self, mutex: Any, started: "list[bool]", task: "asyncio.Task[Any]") -> None:
        self.tasks.discard(task)
        if not started[0]:
            # Cancelled before it ran (the loop shutting down): its finally
            # never ran either.
            _release_later(mutex)
        elif not task.cancelled() and task.exception() is not None:
            _log.warning("%r: background creation failed", self, exc_info=task.exception())


class _Acquisition:
    """The async context manager of ``AsyncDogpile.acquire()``, in general
    (value functions, early refresh)."""

    __slots__ = ("_state", "_creator", "_value_fn", "_value_and_created_fn")

    def __init__(
        self,
        state: _State,
        creator: Callable[[], Any],
        value_fn: Optional[Callable[[], Any]],
        value_and_created_fn: Optional[Callable[[], Any]],
    ) -> None:
        self._state = state
        self._creator = creator
        self._value_fn = value_fn
        self._value_and_created_fn = value_and_created_fn

    async def __aenter__(self) -> Any:
        return await self._state.enter(self._creator, self._value_fn, self._value_and_created_fn)

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        pass


class _PlainAcquisition(_Acquisition):
    """``acquire(creator)`` without value functions or early refresh, from
    Python 3.12 on: the fresh hit is one coroutine that awaits nothing."""

    __slots__ = ()

    async def __aenter__(self) -> Any:
        state = self._state
        createdtime = state.createdtime
        value = state.value
        if not state.expired(createdtime, state.expiretime):
            state.fresh += 1
            return value
        if createdtime > 0 and state.busy():
            # The stale fall-through, one coroutine short of create().
            state.stale += 1
            return value
        return await state.create(self._creator, None, None, value, createdtime)


class _ReadyAcquisition(_Acquisition):
    """``acquire(creator)`` without value functions or early refresh, up to
    Python 3.11: ``__aenter__`` is a plain function, and a fresh hit
    returns a done asyncio.Future holding the value, made once per value,
    so the fresh hit runs no coroutine at all.  (A done Future of a closed
    loop still gives its result in another loop: only a pending one is
    tied to its loop.)

    Why two classes: awaiting a done Future costs about 60 ns up to 3.11
    and about 250 ns from 3.12 on, where a small coroutine became cheaper
    than that.  benchmarks/aio_cases.py measured, against ``async with
    lock:`` on an asyncio.Lock (2-vCPU VM): this class 0.75-0.87x on
    3.9-3.11 where the coroutine was 0.89-0.99x, and 1.23x on 3.12-3.13
    where the coroutine was 0.92-1.05x."""

    __slots__ = ()

    def __aenter__(self) -> Any:  # an awaitable of the value
        state = self._state
        ready = state.ready
        if ready is not None and not state.expired(state.createdtime, state.expiretime):
            state.fresh += 1
            return ready
        return state.enter_plain(self._creator)


_Plain: Type[_Acquisition] = _ReadyAcquisition if sys.version_info < (3, 12) else _PlainAcquisition


class AsyncDogpile:
    """A dogpile lock for asyncio: one task creates a value while every
    other task keeps using the previous one.

    :param expiretime: seconds a created value stays fresh (int or float,
        >= 0), or None for never.
    :param init: if true, the value counts as created now.
    :param lock: an asyncio lock: an object with a coroutine ``acquire()``,
        and ``release()`` and ``locked()`` (either may be a coroutine), like
        ``asyncio.Lock`` or ``dogpile.mutexes.AsyncRedisMutex``.  Default:
        an ``asyncio.Lock`` for the running event loop.
    :param wait_timeout: seconds a task waits for a first value that
        another task is creating before it gives up with LockTimeout; None
        waits as long as it takes.  Any lock will do: the wait is bounded
        here, not by the lock.
    :param background: if true, the task that finds the value expired
        starts the creation as a task of its own and returns the stale value
        at once; the lock is released when that task ends, and its failure
        is logged on the ``dogpile`` logger.
    :param early_refresh: beta of probabilistic early recomputation
        (XFetch), as for Dogpile.
    """

    __slots__ = ("_state", "_creator", "_plain", "_last", "__weakref__")

    # The expiry rule of the core these classes are built over (_build).
    _is_expired: Callable[[float, float], bool] = staticmethod(_CHOSEN_CORE._is_expired)

    def __init__(
        self,
        expiretime: Optional[float],
        init: bool = False,
        lock: Any = None,
        *,
        wait_timeout: Optional[float] = None,
        background: bool = False,
        early_refresh: Optional[float] = None,
    ) -> None:
        state = _State(type(self)._is_expired, type(self).__name__)
        state.expiretime = expiretime_seconds(expiretime)
        state.wait_timeout = wait_timeout_seconds(wait_timeout)
        if lock is not None:
            _check_async_lock(lock)
            state.lock = lock
            state.custom_lock = True
            state.try_acquire = _try_acquirer(lock)
        state.background = _background_flag(background)
        state.beta = early_refresh_beta(early_refresh)
        state.createdtime = _now() if init else -1.0
        self._state = state
        # The last plain acquisition and its creator (see acquire()).
        self._creator: Any = _NO_VALUE  # matches no creator, not even None
        self._plain: Optional[_Acquisition] = None
        self._last: Optional[_Acquisition] = None  # with value functions

    @property
    def createdtime(self) -> float:
        """Epoch seconds at which the value was created; -1 when none."""
        return self._state.createdtime

    @createdtime.setter
    def createdtime(self, value: float) -> None:
        self._state.createdtime = createdtime_seconds(value)

    @property
    def expiretime(self) -> Optional[float]:
        """Seconds a value stays fresh, or None for never."""
        return expiretime_public(self._state.expiretime)

    @expiretime.setter
    def expiretime(self, value: Optional[float]) -> None:
        self._state.expiretime = expiretime_seconds(value)

    @property
    def is_expired(self) -> bool:
        """True when there is no value, or it is older than expiretime."""
        state = self._state
        return bool(state.expired(state.createdtime, state.expiretime))

    @property
    def has_value(self) -> bool:
        """True once a value has been created."""
        return self._state.createdtime > 0

    def stats(self) -> Dict[str, int]:
        """Counts since construction, with the keys of ``Dogpile.stats()``:
        ``fresh`` hits, ``stale`` values served while another task created,
        ``created`` (creator calls), ``waited`` (tasks that waited for a
        first value), ``failed`` (creator exceptions), ``early`` refreshes
        and wait ``timeouts``."""
        s = self._state
        return {
            "fresh": s.fresh,
            "stale": s.stale,
            "created": s.created,
            "waited": s.waited,
            "failed": s.failed,
            "early": s.early,
            "timeouts": s.timeouts,
        }

    def acquire(
        self,
        creator: Callable[[], Any],
        value_fn: Optional[Callable[[], Any]] = None,
        value_and_created_fn: Optional[Callable[[], Any]] = None,
    ) -> _Acquisition:
        """Return an async context manager whose ``as`` target is the value:
        ``async with d.acquire(creator) as value``.

        The rules and the functions are those of ``Dogpile.acquire()``;
        each function may be a plain function or a coroutine function.
        """
        # The last acquisition is reused for the same functions (the usual
        # ``acquire(load)`` in a loop): a fresh hit then makes no object.
        if creator is self._creator and value_fn is None and value_and_created_fn is None:
            return self._plain  # type: ignore[return-value]
        last = self._last
        if (
            last is not None
            and last._creator is creator
            and last._value_fn is value_fn
            and last._value_and_created_fn is value_and_created_fn
        ):
            return last
        check_acquire_args(creator, value_fn, value_and_created_fn)
        state = self._state
        if value_fn is None and value_and_created_fn is None and not state.beta:
            plain = _Plain(state, creator, None, None)
            self._creator = creator
            self._plain = plain
            return plain
        last = self._last = _Acquisition(state, creator, value_fn, value_and_created_fn)
        return last

    async def get(
        self,
        creator: Callable[[], Any],
        value_fn: Optional[Callable[[], Any]] = None,
        value_and_created_fn: Optional[Callable[[], Any]] = None,
    ) -> Any:
        """Return the value that ``acquire()`` would give its ``as`` target:
        the same arguments and rules, without an ``async with`` block:
        ``value = await d.get(creator)``."""
        # __aexit__ does nothing, so entering alone is the whole acquisition.
        return await self.acquire(creator, value_fn, value_and_created_fn).__aenter__()

    def __repr__(self) -> str:
        return repr(self._state)


# -- AsyncLock -----------------------------------------------------------------------------


class AsyncLock:
    """The dogpile.core / dogpile.cache ``Lock`` for coroutines:
    ``async with AsyncLock(...) as value``.

    :param mutex: an asyncio lock (coroutine ``acquire()``; ``release()``
        and ``locked()`` plain or coroutines), like ``asyncio.Lock``.
    :param creator: returns a new ``(value, createdtime)``; a plain or a
        coroutine function.
    :param value_and_created_fn: returns the stored ``(value,
        createdtime)`` or raises NeedRegenerationException; plain or
        coroutine.
    :param expiretime: seconds a value stays fresh, or None for never.
    :param async_creator: if given, called with the (acquired) mutex
        instead of ``creator`` when a stale value exists; it must release
        the mutex itself (typically from a task it starts), and the stale
        value is returned at once.  If it returns an awaitable, that is
        awaited first.
    """

    __slots__ = ("mutex", "creator", "value_and_created_fn", "_expiretime", "async_creator")

    _is_expired: Callable[[float, float], bool] = staticmethod(_CHOSEN_CORE._is_expired)

    def __init__(
        self,
        mutex: Any,
        creator: Callable[[], Any],
        value_and_created_fn: Callable[[], Any],
        expiretime: Optional[float],
        async_creator: Optional[Callable[[Any], Any]] = None,
    ) -> None:
        # Made for every use: the functions and the mutex are checked when
        # first needed, before anything is locked.
        kind = expiretime.__class__
        if kind is float and expiretime >= 0:  # type: ignore[operator]  # false for nan
            self._expiretime: float = expiretime  # type: ignore[assignment]
        else:
            self._expiretime = expiretime_seconds(expiretime)
        self.mutex = mutex
        self.creator = creator
        self.value_and_created_fn = value_and_created_fn
        self.async_creator = async_creator

    @property
    def expiretime(self) -> Optional[float]:
        """Seconds a value stays fresh, or None for never."""
        return expiretime_public(self._expiretime)

    @expiretime.setter
    def expiretime(self, value: Optional[float]) -> None:
        self._expiretime = expiretime_seconds(value)

    async def _stored(self) -> Tuple[Any, float]:
        try:
            result = self.value_and_created_fn()
        except NeedRegenerationException:
            return _NO_VALUE, -1.0
        except TypeError:
            check_callable("value_and_created_fn", self.value_and_created_fn)
            raise
        if _is_awaitable(result):
            try:
                result = await result
            except NeedRegenerationException:
                return _NO_VALUE, -1.0
        return _pair(result, "value_and_created_fn")

    async def __aenter__(self) -> Any:
        # _stored(), inlined: this is the fresh path.
        try:
            result = self.value_and_created_fn()
            if _is_awaitable(result):
                result = await result
        except NeedRegenerationException:
            return await self._create(_NO_VALUE, -1.0)
        except TypeError:
            check_callable("value_and_created_fn", self.value_and_created_fn)
            raise
        value, createdtime = _pair(result, "value_and_created_fn")
        if not self._is_expired(createdtime, self._expiretime):
            return value
        return await self._create(value, createdtime)

    async def _create(self, value: Any, createdtime: float) -> Any:
        mutex = self.mutex
        has_value = createdtime > 0 and value is not _NO_VALUE
        check_callable("creator", self.creator)
        check_callable("async_creator", self.async_creator, optional=True)
        for method in ("acquire", "release"):
            if not callable(getattr(mutex, method, None)):
                _check_async_lock(mutex, "mutex")
        if has_value:
            if isinstance(mutex, (asyncio.Lock, asyncio.Semaphore)):
                got = _try_acquire_now(mutex)
            else:
                got = await _try_acquirer(mutex)(mutex)
            if not got:
                return value
        else:
            await _acquire(mutex)
        handed_off = False
        try:
            if not has_value:
                # We waited: another task or process may have created
                # meanwhile.  Any pair counts as a value, whatever its time
                # (as in the sync Lock: dogpile.cache's contract); an
                # expired value taken without waiting is not read again.
                stored, createdtime = await self._stored()
                if stored is not _NO_VALUE:
                    value = stored
                    if not self._is_expired(createdtime, self._expiretime):
                        return value
                    has_value = True
            if has_value and self.async_creator is not None:
                result = self.async_creator(mutex)
                if _is_awaitable(result):
                    await result
                # Only now: if async_creator raised, the mutex is still ours.
                handed_off = True
                return value
            result = self.creator()
            if _is_awaitable(result):
                result = await result
            value, createdtime = _pair(result, "creator")
            return value
        finally:
            if not handed_off:
                await _release(mutex)

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        pass


# -- over either core ----------------------------------------------------------------------


class Classes(NamedTuple):
    """The asyncio classes over one core (see _build)."""

    AsyncDogpile: Any
    AsyncLock: Any


def _build(core: types.ModuleType) -> Classes:
    """AsyncDogpile and AsyncLock over ``core`` (``dogpile._core`` or
    ``dogpile._core_py``): their fresh path uses that core's
    ``_is_expired``.  Over the core ``import dogpile`` chose, these are the
    public classes themselves; over the other, subclasses of them."""
    if core is _CHOSEN_CORE:
        return Classes(AsyncDogpile, AsyncLock)
    expired = staticmethod(core._is_expired)
    return Classes(
        type(
            "AsyncDogpile",
            (AsyncDogpile,),
            {"__slots__": (), "_is_expired": expired, "__module__": __name__},
        ),
        type(
            "AsyncLock",
            (AsyncLock,),
            {"__slots__": (), "_is_expired": expired, "__module__": __name__},
        ),
    )

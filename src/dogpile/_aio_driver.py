"""The asyncio driver: what an AsyncDogpile holds (``_State``), the
acquisition with value functions or early refresh, and the slow path (no
fresh value, an early refresh due, a background creation).

It takes locks, awaits them and calls creators; every decision it asks of
``_rules``, the same functions and attempt object the thread driver uses.
The fresh hits stay in ``aio``'s acquisitions, where they run no extra
call.  The functions take the ``_State`` and are its methods in all but
placement.
"""

import asyncio
import logging
import os
import weakref
from functools import partial
from time import monotonic as _monotonic
from time import time as _now
from typing import Any, Callable, Optional, Set

from ._aio_locks import (
    _acquire,
    _acquire_or_wait,
    _acquire_within,
    _check_loop_switch,
    _is_awaitable,
    _release,
    _release_later,
    _try_acquire_now,
)
from ._checks import expiretime_public
from ._errors import LockTimeout, NeedRegenerationException
from ._rules import (
    ABANDONED,
    CREATED,
    FAILED,
    INF,
    NO_VALUE,
    PENDING,
    Attempt,
    Counters,
    done_by_another,
    early_due,
    hands_off,
    has_stale,
    pair,
)

_log = logging.getLogger("dogpile")


class _State(Counters):
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
        "name",
        "ready",
    )

    def __init__(self, expired: Callable[[float, float], bool], name: str) -> None:
        self.expired = expired
        self.name = name
        self.createdtime = -1.0
        self.expiretime = INF
        self.value: Any = None
        # Up to Python 3.11, a done asyncio.Future whose result is
        # ``value`` (or None): what a fresh hit returns (_ReadyAcquisition).
        self.ready: Optional[asyncio.Future[Any]] = None
        self.lock: Any = None
        self.custom_lock = False
        self.lock_loop: Any = None  # weak reference to the default lock's loop
        self.lock_pid = 0  # the process that made it (see _check_loop_switch)
        self.try_acquire: Callable[[Any], Any] = _try_acquire_now
        self.attempt: Optional[Attempt] = None
        self.serial = 0
        self.waiting = 0
        self.wait_timeout: Optional[float] = None
        self.background = False
        self.tasks: Set[asyncio.Task[Any]] = set()
        self.beta = 0.0
        self.delta = 0.0
        self._zero_counts()

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
        if attempt is not None:
            attempt.settle()
        self.attempt = None
        self.waiting = 0
        self.tasks.clear()
        self.ready = None  # let the old loop go
        return self.lock


# -- the acquisition with value functions, and the slow path --------------------


async def enter(
    state: _State,
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
            value, createdtime = pair(result, "value_and_created_fn")
        except NeedRegenerationException:
            value, createdtime = NO_VALUE, -1.0
        state.createdtime = createdtime
    elif value_fn is not None:
        # The time before the value: a value newer than its time is
        # harmless, the reverse is not.
        createdtime = state.createdtime
        try:
            value = value_fn()
            if _is_awaitable(value):
                value = await value
        except NeedRegenerationException:
            # Not stored: a creation may have finished while value_fn
            # ran, and its time must stand (the check under the lock
            # asks value_fn again).
            value, createdtime = NO_VALUE, -1.0
    else:
        createdtime = state.createdtime
        value = state.value
    if not state.expired(createdtime, state.expiretime):
        if state.beta and early_due(
            _now() - createdtime, state.expiretime, state.delta, state.beta
        ):
            return await refresh_early(
                state, creator, value_fn, value_and_created_fn, value, createdtime
            )
        state._fresh += 1
        return value
    return await create(state, creator, value_fn, value_and_created_fn, value, createdtime)


async def enter_plain(state: _State, creator: Callable[[], Any]) -> Any:
    """``acquire(creator)`` when _ReadyAcquisition has no ready value:
    a fresh hit makes one for the next."""
    createdtime = state.createdtime
    value = state.value
    if not state.expired(createdtime, state.expiretime):
        future = asyncio.get_running_loop().create_future()
        future.set_result(value)
        state.ready = future
        state._fresh += 1
        return value
    if createdtime > 0 and state.busy():
        # The stale fall-through, one coroutine short of create().
        state._stale += 1
        return value
    return await create(state, creator, None, None, value, createdtime)


async def create(
    state: _State,
    creator: Callable[[], Any],
    value_fn: Optional[Callable[[], Any]],
    value_and_created_fn: Optional[Callable[[], Any]],
    value: Any,
    createdtime: float,
) -> Any:
    mutex = state.mutex()
    if state.custom_lock and not has_stale(value, createdtime):
        waiter = getattr(mutex, "acquire_or_wait", None)
        if waiter is not None:
            return await wait_for_release(
                state, mutex, waiter, creator, value_fn, value_and_created_fn, value
            )
    got = state.try_acquire(mutex)
    if got is not True and got is not False:
        got = await got
    if not got:
        if has_stale(value, createdtime):
            # A stale value exists: whoever holds the lock is already
            # creating, so serve the stale value rather than wait.
            state._stale += 1
            return value
        shared = await wait(state, mutex)
        if shared is not None:
            return shared.outcome()
    return await locked(state, mutex, creator, value_fn, value_and_created_fn, value, None)


async def wait(state: _State, mutex: Any) -> Optional[Attempt]:
    """No value, and another task creates: wait for the lock.  Return
    the finished creation whose outcome this task shares (the lock
    released again), or None with the lock held."""
    attempt = state.attempt
    if attempt is not None and attempt.state == PENDING:
        attempt.refuse_its_owner(asyncio.current_task(), "AsyncDogpile")
        first = attempt.serial
    else:
        first = state.serial + 1
    state._waited += 1
    if _log.isEnabledFor(logging.DEBUG):
        _log.debug("%r: no value, waiting for the creator", state)
    state.waiting += 1
    try:
        timeout = state.wait_timeout
        if timeout is None:
            got = await _acquire(mutex)
        else:
            got = await _acquire_within(mutex, timeout)
    finally:
        state.waiting -= 1
        last = state.attempt
        if state.waiting <= 0 and last is not None and last.state != PENDING:
            state.attempt = None  # nobody else waits for it: drop its value
    if not got:
        state._timeouts += 1
        raise LockTimeout(
            f"no value after waiting {timeout} s (wait_timeout) for another task's creator"
        )
    if last is not None and last.serial >= first and last.has_outcome():
        # The creation this task waited for is over: share its outcome
        # rather than run the creator again for each waiter.  A creation
        # that was cancelled is no outcome: this task goes on to create.
        await _release(mutex)
        return last
    return None


async def wait_for_release(
    state: _State,
    mutex: Any,
    wait: Callable[[float], Any],
    creator: Callable[[], Any],
    value_fn: Optional[Callable[[], Any]],
    value_and_created_fn: Optional[Callable[[], Any]],
    value: Any,
) -> Any:
    """No value, and the lock can wait for its holder's release without
    taking it (``acquire_or_wait``: AsyncRedisMutex).  Take it if it is
    free; otherwise wait for the release and read the value the holder
    made, once; only a value still missing sends this task back to the
    lock (the thread driver's _wait_for_release, over asyncio)."""
    attempt = state.attempt
    if attempt is not None and attempt.state == PENDING:
        attempt.refuse_its_owner(asyncio.current_task(), "AsyncDogpile")
        first = attempt.serial
    else:
        first = state.serial + 1
    timeout = state.wait_timeout
    deadline = None if timeout is None else _monotonic() + timeout
    waited = False
    while True:
        left = -1.0 if deadline is None else max(0.0, deadline - _monotonic())
        state.waiting += 1
        try:
            got = await _acquire_or_wait(mutex, wait, left)
        finally:
            state.waiting -= 1
            last = state.attempt
            if state.waiting <= 0 and last is not None and last.state != PENDING:
                state.attempt = None  # nobody else waits for it: drop its value
        if got:
            break
        if not waited:
            waited = True
            state._waited += 1
            if _log.isEnabledFor(logging.DEBUG):
                _log.debug("%r: no value, waiting for the creator", state)
        # Released, or the wait ended (the holder's lease ran out, the
        # mutex's safety net, the deadline).  A creation of this process
        # shares its outcome, a failure included; another's left its value
        # where the value functions read.
        if last is not None and last.serial >= first and last.has_outcome():
            return last.outcome()
        found, createdtime = await read_unlocked(state, value_fn, value_and_created_fn)
        if found is not NO_VALUE:
            if not state.expired(createdtime, state.expiretime):
                return found
            # Expired already: a stale value, served while whoever holds
            # the lock now recreates it (or recreated here if it is free).
            return await create(state, creator, value_fn, value_and_created_fn, found, createdtime)
        if deadline is not None and _monotonic() >= deadline:
            state._timeouts += 1
            raise LockTimeout(
                f"no value after waiting {timeout} s (wait_timeout) for another task's creator"
            )
    # Taken, at once or after a wait (a custom lock may wait inside
    # acquire_or_wait): a creation that began after this task arrived, and
    # has ended since, is the one it waited for.
    if last is not None and last.serial >= first and last.has_outcome():
        await _release(mutex)
        return last.outcome()
    return await locked(state, mutex, creator, value_fn, value_and_created_fn, value, None)


async def read_stored(state: _State, value_and_created_fn: Callable[[], Any]) -> Any:
    """``(value, createdtime)`` from the caller's store, ``(NO_VALUE, -1.0)``
    when it has none; the time is kept on the state.  (enter() reads inline:
    it is the fresh path of value functions.)"""
    try:
        result = value_and_created_fn()
        if _is_awaitable(result):
            result = await result
        value, createdtime = pair(result, "value_and_created_fn")
    except NeedRegenerationException:
        value, createdtime = NO_VALUE, -1.0
    state.createdtime = createdtime
    return value, createdtime


async def read_unlocked(
    state: _State,
    value_fn: Optional[Callable[[], Any]],
    value_and_created_fn: Optional[Callable[[], Any]],
) -> Any:
    """The value and its creation time, read without the lock after a
    release: what locked() reads to learn whether another task created."""
    if value_and_created_fn is not None:
        value, createdtime = await read_stored(state, value_and_created_fn)
        return (value, createdtime) if has_stale(value, createdtime) else (NO_VALUE, -1.0)
    createdtime = state.createdtime
    if state.expired(createdtime, state.expiretime):
        # Created in another process: this one keeps no value of its own.
        return NO_VALUE, -1.0
    if value_fn is None:
        return state.value, createdtime
    try:
        value = value_fn()
        if _is_awaitable(value):
            value = await value
    except NeedRegenerationException:
        return NO_VALUE, -1.0
    return value, createdtime


async def refresh_early(
    state: _State,
    creator: Callable[[], Any],
    value_fn: Optional[Callable[[], Any]],
    value_and_created_fn: Optional[Callable[[], Any]],
    value: Any,
    createdtime: float,
) -> Any:
    mutex = state.mutex()
    got = state.try_acquire(mutex)
    if got is not True and got is not False:
        got = await got
    if not got:
        state._fresh += 1
        return value
    state._early += 1
    return await locked(state, mutex, creator, value_fn, value_and_created_fn, value, createdtime)


async def locked(
    state: _State,
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
            _log.debug("%r: refreshing early", state)
        if value_and_created_fn is not None:
            value, createdtime = await read_stored(state, value_and_created_fn)
            expiretime, expired = state.expiretime, state.expired
            if value is not NO_VALUE and done_by_another(createdtime, seen, expiretime, expired):
                return value
            stale = value if createdtime > 0 else NO_VALUE
        elif value_fn is not None:
            if done_by_another(state.createdtime, seen, state.expiretime, state.expired):
                try:
                    value = value_fn()
                    if _is_awaitable(value):
                        value = await value
                    return value
                except NeedRegenerationException:
                    value = NO_VALUE
            stale = value
        else:
            if done_by_another(state.createdtime, seen, state.expiretime, state.expired):
                return state.value
            stale = state.value if state.createdtime > 0 else NO_VALUE
        if hands_off(stale, state.background):
            start_background(state, mutex, creator, value_fn, value_and_created_fn)
            handed_off = True
            if seen is None:
                state._stale += 1
            return stale
        return await run_creator(state, creator, value_fn, value_and_created_fn)
    finally:
        if not handed_off:
            await _release(mutex)


async def run_creator(
    state: _State,
    creator: Callable[[], Any],
    value_fn: Optional[Callable[[], Any]],
    value_and_created_fn: Optional[Callable[[], Any]],
) -> Any:
    state.serial += 1
    attempt = Attempt(asyncio.current_task(), serial=state.serial)
    started = _monotonic()
    debug = False
    try:
        # In the try, so that the finally settles the attempt whatever
        # happens from here on (even in the logging).
        state.attempt = attempt
        state._created += 1
        debug = _log.isEnabledFor(logging.DEBUG)
        if debug:
            _log.debug("%r: calling the creator", state)
        result = creator()
        if _is_awaitable(result):
            result = await result
        if value_and_created_fn is not None:
            value, state.createdtime = pair(result, "creator")
        else:
            value = result
            if value_fn is None:
                state.value = value
                state.ready = None
            state.createdtime = _now()
    except Exception as exc:
        state._failed += 1
        attempt.finish(FAILED, exc)
        if debug:
            _log.debug("%r: the creator failed: %r", state, exc)
        raise
    except BaseException:
        # Cancelled (or interrupted): no outcome to share; the tasks
        # that waited go on, and one of them creates.
        attempt.finish(ABANDONED, None)
        if debug:
            _log.debug("%r: the creator was cancelled", state)
        raise
    else:
        attempt.finish(CREATED, value)
        return value
    finally:
        state.delta = _monotonic() - started
        if state.waiting <= 0 and state.attempt is attempt:
            state.attempt = None  # nobody waits for it: drop its value


def start_background(
    state: _State,
    mutex: Any,
    creator: Callable[[], Any],
    value_fn: Optional[Callable[[], Any]],
    value_and_created_fn: Optional[Callable[[], Any]],
) -> None:
    started = [False]
    task = asyncio.ensure_future(
        create_in_background(state, mutex, started, creator, value_fn, value_and_created_fn)
    )
    # The event loop keeps only weak references to its tasks.
    state.tasks.add(task)
    task.add_done_callback(partial(background_done, state, mutex, started))
    if _log.isEnabledFor(logging.DEBUG):
        _log.debug("%r: creating in the background", state)


async def create_in_background(
    state: _State,
    mutex: Any,
    started: "list[bool]",
    creator: Callable[[], Any],
    value_fn: Optional[Callable[[], Any]],
    value_and_created_fn: Optional[Callable[[], Any]],
) -> None:
    started[0] = True
    try:
        await run_creator(state, creator, value_fn, value_and_created_fn)
    except Exception:
        # Nobody awaits a background creation, so its failure would go
        # unseen; the next task to find the value expired tries again.
        _log.warning("%r: background creation failed", state, exc_info=True)
    finally:
        await _release(mutex)


def background_done(
    state: _State, mutex: Any, started: "list[bool]", task: "asyncio.Task[Any]"
) -> None:
    state.tasks.discard(task)
    if not started[0]:
        # Cancelled before it ran (the loop shutting down): its finally
        # never ran either.
        _release_later(mutex)
    elif not task.cancelled() and task.exception() is not None:
        _log.warning("%r: background creation failed", state, exc_info=task.exception())

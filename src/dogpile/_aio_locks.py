"""The asyncio lock adapters that dogpile.aio and AsyncRedisMutex share.

Awaiting any lock's acquire() and release() (refusing a threading lock),
taking one without waiting, within a timeout, or only if free; clean-ups
that outlive a cancellation and the loop's shutdown; the check that an
object serving one event loop may move to another.  It imports nothing of
dogpile's but its errors, so that ``dogpile.aio`` and
``dogpile.mutexes._aio_redis`` both build on it without importing each
other.
"""

import asyncio
import inspect
import logging
import os
import sys
import threading
import types
import weakref
from functools import partial
from typing import Any, Callable, Optional, Set

_log = logging.getLogger("dogpile")

# -- awaitables ----------------------------------------------------------------------------

_COROUTINE = types.CoroutineType
# Results that are never awaitable, so that a plain value function does not
# pay for inspect.isawaitable's ABC check on every call.
_PLAIN_TYPES = frozenset(
    {tuple, list, dict, str, bytes, int, float, bool, type(None), set, frozenset}
)


def _is_awaitable(obj: Any) -> bool:
    cls = obj.__class__
    if cls is _COROUTINE:
        return True
    if cls in _PLAIN_TYPES:
        return False
    return inspect.isawaitable(obj)


def _kind(obj: Any) -> str:
    return type(obj).__name__


def _not_awaitable(mutex: Any, method: str, result: Any) -> TypeError:
    return TypeError(
        f"{_kind(mutex)}.{method}() returned {_kind(result)!r}, not an awaitable: "
        "an asyncio dogpile lock needs a lock whose acquire() is a coroutine, like "
        "asyncio.Lock or dogpile.mutexes.AsyncRedisMutex (a threading lock would "
        "block the event loop)"
    )


async def _acquire_or_wait(mutex: Any, wait: Callable[[float], Any], timeout: float) -> bool:
    """``await mutex.acquire_or_wait(timeout)``, refusing a lock that is not
    asynchronous."""
    result = wait(timeout)
    if not _is_awaitable(result):
        if result:  # taken without a wait: give it back first
            _release_later(mutex)
        raise _not_awaitable(mutex, "acquire_or_wait", result)
    return bool(await result)


async def _acquire(mutex: Any) -> bool:
    """``await mutex.acquire()``, refusing a lock that is not asynchronous."""
    result = mutex.acquire()
    if not _is_awaitable(result):
        if result:  # a threading lock, now held: give it back first
            # (through _release_later: an asyncio lock whose acquire() alone
            # is plain has a release() to await)
            _release_later(mutex)
        raise _not_awaitable(mutex, "acquire", result)
    return bool(await result)


# -- clean-up that outlives cancellation and the loop's shutdown -----------------------------
#
# A release, or the take-back of a key a cancelled acquire() may have set,
# that is cut off halfway leaves a lock held for its whole lease.  Two
# things cut them off: a caller that stops waiting (task.cancel(), a
# timeout), and asyncio.run() ending, which cancels every task of its loop
# once (a task cancelled before its first step never runs at all; tasks
# started during that sweep are not cancelled, but nothing waits for them
# either) and then closes the loop.  asyncio.shield() helps against the
# first only: the shielded task is one of "every task".  So a clean-up is a
# future of its own, registered here, that is not a task (the sweep cancels
# tasks only) and is settled by the runs of its command:
#
# - a caller's cancellation leaves it running (the caller awaits it
#   shielded);
# - a run that is cancelled (the sweep) is followed by another, as a new
#   task, when the command is idempotent (``reruns``): the cut-off run may
#   or may not have reached the server, and a second compare-and-delete of
#   the same token is harmless;
# - the loop's shutdown waits for it: asyncio.run() closes the loop's async
#   generators (loop.shutdown_asyncgens()) after the sweep and before it
#   closes the loop, and while clean-ups are pending a guard generator is
#   registered with the loop whose ``finally`` waits for them.

_CLEANUP_RERUNS = 3
# Per event loop, while any are pending: the clean-ups, and the guard.
_cleanups: "weakref.WeakKeyDictionary[Any, Set[asyncio.Future[Any]]]" = (
    weakref.WeakKeyDictionary()
)
_guards: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def _clean_up(
    make: Callable[[], Any], reruns: int = 0, what: Optional[str] = None
) -> "asyncio.Future[Any]":
    """Run ``await make()`` as a clean-up of the running loop (see above);
    return the future of its outcome.  ``what``, if given, names it in the
    warning logged when it fails (for a clean-up nobody awaits)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    pending = _cleanups.get(loop)
    if pending is None:
        pending = _cleanups[loop] = set()
        _guard(loop, pending)
    pending.add(done)
    done.add_done_callback(partial(_clean_up_done, loop, what))
    _run(loop, make, reruns, done)
    return done


def _run(loop: Any, make: Callable[[], Any], reruns: int, done: "asyncio.Future[Any]") -> None:
    task = loop.create_task(_await(make))
    task.add_done_callback(partial(_ran, loop, make, reruns, done))


async def _await(make: Callable[[], Any]) -> Any:
    return await make()


def _ran(
    loop: Any,
    make: Callable[[], Any],
    reruns: int,
    done: "asyncio.Future[Any]",
    task: "asyncio.Task[Any]",
) -> None:
    if task.cancelled():
        if done.done():
            return
        if reruns > 0 and not loop.is_closed():
            _run(loop, make, reruns - 1, done)
        else:
            done.cancel()
        return
    exc = task.exception()  # retrieved, so asyncio does not log it again
    if done.done():
        return
    if exc is not None:
        done.set_exception(exc)
    else:
        done.set_result(task.result())


def _clean_up_done(loop: Any, what: Optional[str], done: "asyncio.Future[Any]") -> None:
    pending = _cleanups.get(loop)
    if pending is not None:
        pending.discard(done)
        if not pending:
            del _cleanups[loop]
            guard = _guards.pop(loop, None)
            if guard is not None:
                _close_guard(guard)
    if done.cancelled():
        return
    exc = done.exception()  # retrieved here, so asyncio does not log it
    if exc is not None:
        if what is not None:
            _log.warning("%s failed", what, exc_info=exc)
        else:
            _log.debug("a clean-up failed: %r", exc)


async def _shutdown_guard(pending: "Set[asyncio.Future[Any]]") -> Any:
    try:
        yield
    finally:
        # Closed by loop.shutdown_asyncgens(): wait for what is pending.
        while pending:
            await asyncio.wait(list(pending))


def _guard(loop: Any, pending: "Set[asyncio.Future[Any]]") -> None:
    if getattr(loop, "_asyncgens_shutdown_called", False):
        return  # shutting down already: a new generator would not be closed
    guard = _shutdown_guard(pending)
    # The first step registers it with the running loop (its asyncgen
    # firstiter hook), which will close it at shutdown.
    _step(guard.__anext__())
    _guards[loop] = guard


def _close_guard(guard: Any) -> None:
    # Nothing pending: its finally ends at once, without awaiting.
    try:
        _step(guard.aclose())
    except RuntimeError:  # pragma: no cover - already running (closed by the loop)
        pass


def _step(coroutine: Any) -> None:
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()  # pragma: no cover - the guard never awaits here


async def _release(mutex: Any) -> None:
    result = mutex.release()
    if result is not None and _is_awaitable(result):
        # Shielded: a task cancelled again while it releases must not leave
        # the lock held; the release runs to its end regardless, and the
        # loop's shutdown waits for it.
        await asyncio.shield(_clean_up(partial(_identity, result)))


def _release_later(mutex: Any) -> None:
    """Release from a callback, where nothing can be awaited."""
    result = mutex.release()
    if result is not None and _is_awaitable(result):
        _clean_up(partial(_identity, result), what="a dogpile lock's release()")


def _identity(awaitable: Any) -> Any:
    return awaitable


def _try_acquire_now(lock: Any) -> bool:
    """Take an in-loop lock (asyncio.Lock, asyncio.Semaphore) if that needs no
    wait; never wait.

    ``locked()`` alone is not enough: an asyncio.Lock that was just released
    to a waiter that has not run yet reads as unlocked, and acquire() queues
    behind that waiter.  So the acquire() coroutine is started here; if it
    finishes without suspending the lock is ours, and if it would suspend,
    closing it takes it off the lock's queue (its ``finally``) as if it had
    never asked."""
    if lock.locked():
        return False
    coroutine = lock.acquire()
    try:
        coroutine.send(None)
    except StopIteration:
        return True
    coroutine.close()
    return False


async def _try_acquire_nonblocking(lock: Any) -> bool:
    """A lock whose acquire() takes ``blocking`` (AsyncRedisMutex)."""
    result = lock.acquire(False)
    if not _is_awaitable(result):
        if result:
            lock.release()
        raise _not_awaitable(lock, "acquire", result)
    return bool(await result)


async def _try_acquire_if_free(lock: Any) -> bool:
    """Any other lock: acquire() only when locked() says it is free.  Such a
    lock may still make this caller wait briefly, if another caller takes it
    between the two calls; there is no way to ask it not to."""
    locked = lock.locked()
    if _is_awaitable(locked):
        locked = await locked
    if locked:
        return False
    return await _acquire(lock)


def _takes_blocking(acquire: Any) -> bool:
    try:
        parameters = inspect.signature(acquire).parameters
    except (TypeError, ValueError):  # no signature to read
        return False
    return "blocking" in parameters


def _try_acquirer(lock: Any) -> Callable[[Any], Any]:
    """How to take ``lock`` without waiting for it: a function that returns
    a bool, or an awaitable of one."""
    if isinstance(lock, (asyncio.Lock, asyncio.Semaphore)):
        return _try_acquire_now
    if _takes_blocking(lock.acquire):
        return _try_acquire_nonblocking
    return _try_acquire_if_free


def _check_async_lock(lock: Any, what: str = "lock") -> None:
    sync = (type(threading.Lock()), type(threading.RLock()), threading.Semaphore)
    # FileMutex and RedisMutex, without importing them (the asyncio Redis
    # mutex imports this module): an instance exists only if they are loaded.
    common = sys.modules.get("dogpile.mutexes._common")
    if isinstance(lock, sync) or (common is not None and isinstance(lock, common._MutexBase)):
        raise TypeError(
            f"{what} must be an asyncio lock (acquire() a coroutine), like asyncio.Lock "
            f"or dogpile.mutexes.AsyncRedisMutex; {_kind(lock)!r} is a threading lock, "
            "whose acquire() would block the event loop"
        )
    for method in ("acquire", "release", "locked"):
        if not callable(getattr(lock, method, None)):
            raise TypeError(
                f"{what} must have acquire() (a coroutine), release() and locked() "
                f"methods, like asyncio.Lock; {_kind(lock)!r} has no {method}()"
            )
    wait = getattr(lock, "acquire_or_wait", None)
    if wait is not None and not callable(wait):
        raise TypeError(
            f"{what}.acquire_or_wait must be a coroutine method (timeout) -> bool, or "
            f"absent; {_kind(lock)}.acquire_or_wait is a {_kind(wait)!r}"
        )


async def _acquire_within(mutex: Any, timeout: float) -> bool:
    """Acquire ``mutex`` within ``timeout`` seconds; False when it was not.

    Not asyncio.wait_for: before 3.12 it could cancel an acquire() that had
    just succeeded and lose the lock.  Here the acquire() runs as a task of
    its own that is never cancelled after it has succeeded: one that
    succeeds after this caller has given up releases what it took."""
    task = asyncio.ensure_future(_acquire(mutex))
    try:
        done, _ = await asyncio.wait((task,), timeout=timeout)
    except BaseException:  # this caller was cancelled while it waited
        _abandon(task, mutex)
        raise
    if done:
        return task.result()
    _abandon(task, mutex)
    return False


def _abandon(task: "asyncio.Future[bool]", mutex: Any) -> None:
    if task.done():
        _release_if_taken(mutex, task)
    else:
        task.cancel()
        task.add_done_callback(partial(_release_if_taken, mutex))


def _release_if_taken(mutex: Any, task: "asyncio.Future[bool]") -> None:
    if task.cancelled():
        return
    if task.exception() is not None:
        _log.debug("an abandoned acquire() failed: %r", task.exception())
        return
    if task.result():
        _release_later(mutex)


def _check_loop_switch(old_loop: Any, lock: Any, owner: Any, pid: int) -> None:
    """May ``owner`` drop its lock of ``old_loop`` (made in process ``pid``)
    for the running loop?"""
    if old_loop is None or old_loop.is_closed():
        return  # that loop's tasks will never run again
    if pid != os.getpid():
        # A child forked while that loop ran: the copy still reads as
        # running (and its lock as held), but no task of it runs here.
        return
    if old_loop.is_running() or lock.locked():
        raise RuntimeError(
            f"{owner!r} is in use by another event loop that is still open "
            f"({old_loop!r}); it serves one event loop at a time: close that loop "
            "first, or give each event loop its own"
        )

"""How the asyncio front end takes, waits for and gives back a lock: any
object with a coroutine ``acquire()``, ``release()`` and ``locked()`` (plain
or coroutines), asyncio.Lock first among them.  No rule of the dogpile lock
lives here (see _rules); ``aio`` and the asyncio Redis mutex both use it."""

import asyncio
import inspect
import logging
import threading
import types
from functools import partial
from typing import Any, Callable, Set

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


async def _acquire(mutex: Any) -> bool:
    """``await mutex.acquire()``, refusing a lock that is not asynchronous."""
    result = mutex.acquire()
    if not _is_awaitable(result):
        if result:  # a threading lock, now held: give it back first
            mutex.release()
        raise _not_awaitable(mutex, "acquire", result)
    return bool(await result)


# Releases that are coroutines (AsyncRedisMutex), kept referenced until done
# when nobody awaits them (see _release_later).
_pending_releases: Set["asyncio.Future[Any]"] = set()


async def _release(mutex: Any) -> None:
    result = mutex.release()
    if result is not None and _is_awaitable(result):
        # Shielded: a task cancelled again while it releases must not leave
        # the lock held; the release runs to its end regardless.
        await asyncio.shield(result)


def _release_later(mutex: Any) -> None:
    """Release from a callback, where nothing can be awaited."""
    result = mutex.release()
    if result is not None and _is_awaitable(result):
        future = asyncio.ensure_future(result)
        _pending_releases.add(future)
        future.add_done_callback(_release_done)


def _release_done(future: "asyncio.Future[Any]") -> None:
    _pending_releases.discard(future)
    if not future.cancelled() and future.exception() is not None:
        _log.warning("a dogpile lock's release() failed", exc_info=future.exception())


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
    from . import mutexes  # not at import time: mutexes re-exports AsyncRedisMutex

    sync = (type(threading.Lock()), type(threading.RLock()), threading.Semaphore)
    if isinstance(lock, sync) or isinstance(lock, (mutexes.FileMutex, mutexes.RedisMutex)):
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


def _check_loop_switch(old_loop: Any, lock: Any, owner: Any) -> None:
    """May ``owner`` drop its lock of ``old_loop`` for the running loop?"""
    if old_loop is None or old_loop.is_closed():
        return  # that loop's tasks will never run again
    if old_loop.is_running() or lock.locked():
        raise RuntimeError(
            f"{owner!r} is in use by another event loop that is still open "
            f"({old_loop!r}); it serves one event loop at a time: close that loop "
            "first, or give each event loop its own"
        )

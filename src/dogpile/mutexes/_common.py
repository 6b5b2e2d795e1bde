"""What every mutex of the package shares: acquire()'s argument checks,
the back-off schedule of a waiter that polls, fork safety, gevent and
eventlet detection, the ``threading.Lock`` shape, and LeaseLost."""

import _thread
import math
import os
import random
import threading
import time
import weakref
from typing import Any, Optional, Tuple

from .._errors import LockError


class LeaseLost(LockError):
    """``RedisMutex.release()`` found that the lock was no longer this
    mutex's: its lease ran out (or someone else set the key) while it was
    held.  Whatever lock is there now belongs to someone else and was left
    alone, and the mutex counts as released."""


# -- shared by both mutexes --------------------------------------------------------


def _deadline(blocking: Any, timeout: Any) -> Optional[float]:
    """Check ``acquire()``'s arguments as ``threading.Lock.acquire`` does and
    return the monotonic deadline (None: wait for ever)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__!r}")
    if not blocking:
        if timeout != -1:
            raise ValueError("can't specify a timeout for a non-blocking acquire()")
        return None
    if timeout == -1:
        return None
    if not timeout >= 0:  # also catches nan
        raise ValueError(
            f"timeout must be -1 (wait for ever) or a number of seconds >= 0, got {timeout!r}"
        )
    if math.isinf(timeout):
        return None
    return time.monotonic() + timeout


def _remaining(deadline: Optional[float]) -> float:
    """Seconds left before ``deadline`` as a ``threading.Lock`` timeout."""
    if deadline is None:
        return -1
    return max(0.0, deadline - time.monotonic())


# A waiter polls a lock it cannot wait on directly (a Redis key on a server
# before Redis 6; a file lock with a timeout, or on Windows) with
# exponential back-off from the first delay up to the cap, each sleep drawn
# from the upper half of the current delay so that waiting processes spread
# out instead of retrying in step.
# The cap bounds how late a waiter notices a release; at 0.1 s a hundred
# waiting processes cost the server a thousand cheap SETs a second.
_BACKOFF_FIRST = 0.002
_BACKOFF_CAP = 0.1


def _backoff_step(delay: float, deadline: Optional[float]) -> Optional[Tuple[float, float]]:
    """(seconds to sleep now, the next delay), or None when the deadline
    has passed and the waiter should give up: the schedule, for the
    blocking ``_backoff`` below and AsyncRedisMutex's awaited one."""
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
    else:
        left = math.inf
    return min(delay * (0.5 + 0.5 * random.random()), left), min(delay * 2, _BACKOFF_CAP)


def _backoff(delay: float, deadline: Optional[float]) -> Optional[float]:
    """Sleep before the next try; return the next delay, or None when the
    deadline has passed and the caller should give up."""
    step = _backoff_step(delay, deadline)
    if step is None:
        return None
    time.sleep(step[0])
    return step[1]


# A forked child has only the thread that forked.  A mutex the parent held
# (in any thread) must not count as held in the child: a release there would
# free the parent's lock (the child shares the parent's open file) or delete
# the parent's Redis key (the child has its token).  Each live mutex is
# reset to "not held" in the child; the parent's lock stays the parent's.
_instances: "weakref.WeakSet[Any]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for mutex in list(_instances):
        mutex._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# gevent and eventlet.  Monkey-patching replaces _thread.allocate_lock (the
# compiled core tests the same thing, see _core.pyx).  Each mutex queues this
# process's callers on an in-process lock; one made before the patching (a
# mutex built at import, before a gunicorn gevent worker patches) would block
# the OS thread, and with it the greenlet holding the mutex: acquire() makes
# new ones first (nothing holds the old ones: every acquisition since the
# patching came through here).  And a blocking flock() would stop every
# greenlet until another process unlocks: FileMutex polls instead.
_BUILTIN: Any = type(len)


def _cooperative() -> bool:
    return type(_thread.allocate_lock) is not _BUILTIN


class _MutexBase:
    __slots__ = ()
    # The in-process locks of FileMutex and RedisMutex, and what made them.
    _local: Any
    _guard: Any
    _made_with: Any

    def _locks_for_now(self) -> None:
        """Make the in-process locks again if gevent or eventlet patched
        _thread.allocate_lock since they were made: a lock made before the
        patching blocks the whole OS thread, and every greenlet with it."""
        if _thread.allocate_lock is not self._made_with:
            self._local = threading.Lock()
            self._guard = threading.Lock()
            self._made_with = _thread.allocate_lock

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:  # pragma: no cover
        raise NotImplementedError

    def release(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def __enter__(self) -> "_MutexBase":
        self.acquire()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.release()

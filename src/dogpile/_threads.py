"""The thread driver of the Python twin: the slow path of ``Dogpile`` (no
fresh value, or an early refresh due) and of ``Lock``.

It takes locks, waits for them and calls creators; every decision it asks
of ``_rules``.  The fresh path stays in ``_core_py`` itself, where a fresh
hit makes no call beyond the clock.  The functions take the Dogpile ``d``
and read and write its slots: they are its methods in all but placement.
"""

import _thread
import logging
import os
import threading
from time import monotonic as _monotonic
from time import time as _now
from typing import Any, Callable, Optional

from . import _rules
from ._checks import check_acquired, not_initialised
from ._errors import LockTimeout, NeedRegenerationException
from ._rules import NO_VALUE, Attempt, done_by_another, hands_off, has_stale, is_expired, pair

_log = logging.getLogger("dogpile")

# A forked child has one thread; a lock held by any other thread of the
# parent would never be released there.  Each Dogpile remembers the fork
# generation its default lock was made in and makes a new one when the
# generation has moved on (see mutex_now).
fork_generation = 0
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
    global fork_generation, _fork_guard
    fork_generation += 1
    _fork_guard = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def mutex_now(d: Any) -> Any:
    global fork_generation, _lock_factory
    if d._custom_lock or (
        d._lock_generation == fork_generation and _thread.allocate_lock is _lock_factory
    ):
        return d._lock
    with _fork_guard:
        if _thread.allocate_lock is not _lock_factory:
            _lock_factory = _thread.allocate_lock
            fork_generation += 1
        if d._lock_generation != fork_generation:
            d._lock = threading.Lock()
            d._lock_generation = fork_generation
        return d._lock


def _wait_for(d: Any, mutex: Any) -> bool:
    timeout = d._wait_timeout
    if timeout is None:
        mutex.acquire()
        return True
    return bool(mutex.acquire(True, timeout=timeout))


def create(
    d: Any,
    creator: Callable[[], Any],
    value_fn: Optional[Callable[[], Any]],
    value_and_created_fn: Optional[Callable[[], Any]],
    value: Any,
    createdtime: float,
) -> Any:
    if d._expiretime != d._expiretime:  # nan: __init__ never ran
        raise not_initialised(d)
    mutex = mutex_now(d)
    if has_stale(value, createdtime):
        # A stale value exists: whoever holds the lock is already
        # creating, so serve the stale value rather than wait.
        if not mutex.acquire(False):
            d._stale += 1
            return value
    else:
        # Read before trying the lock: see _wait.
        arrived = d._serial
        if d._custom_lock:
            wait = getattr(mutex, "acquire_or_wait", None)
            if wait is not None:
                return _wait_for_release(
                    d, mutex, wait, arrived, creator, value_fn, value_and_created_fn, value
                )
        if not mutex.acquire(False):
            return _wait(d, mutex, arrived, creator, value_fn, value_and_created_fn, value)
    return _locked(d, mutex, creator, value_fn, value_and_created_fn, value, None)


def _attempt_here(d: Any) -> Optional[Attempt]:
    """The attempt in progress, unless a thread of the parent process left
    it: that one will never finish here, and its owner's ident may be
    reused."""
    attempt: Optional[Attempt] = d._attempt
    if attempt is not None and attempt.generation != fork_generation:
        return None
    return attempt


def _prior(d: Any, attempt: Optional[Attempt], arrived: int) -> Optional[Attempt]:
    """The attempt a caller that arrived at serial ``arrived``, and saw
    ``attempt`` in progress then, waited for."""
    if attempt is not None:
        return attempt.last()
    # The holder had not published its attempt yet (a thread switch
    # between its taking the lock and _publish; the compiled core has the
    # same window inside a custom lock's acquire), or it ended before this
    # caller looked.  A failure that had not ended when this caller
    # arrived is the one it waited for.
    prior: Optional[Attempt] = d._failure
    if prior is not None and prior.serial < arrived:
        return None
    return prior


def _wait(
    d: Any,
    mutex: Any,
    arrived: int,
    creator: Callable[[], Any],
    value_fn: Optional[Callable[[], Any]],
    value_and_created_fn: Optional[Callable[[], Any]],
    value: Any,
) -> Any:
    """No value, and another caller holds the lock: wait for it, then share
    the outcome of the creation that ran meanwhile, or create."""
    attempt = _attempt_here(d)
    if attempt is not None:
        attempt.refuse_its_owner(threading.get_ident(), "Dogpile")
    _count_wait(d)
    if not _wait_for(d, mutex):
        raise _timed_out(d)
    prior = _prior(d, attempt, arrived)
    if prior is not None:
        if prior.has_outcome():
            # The creation we waited for is over: share its outcome
            # rather than run the creator again for each waiter.
            mutex.release()
            return prior.outcome()
        # Abandoned (its creator raised KeyboardInterrupt, say): this
        # caller creates, and the others waiting for the same attempt
        # share this one's outcome through prior.next.
    return _locked(d, mutex, creator, value_fn, value_and_created_fn, value, None, prior)


def _wait_for_release(
    d: Any,
    mutex: Any,
    wait: Callable[[float], Any],
    arrived: int,
    creator: Callable[[], Any],
    value_fn: Optional[Callable[[], Any]],
    value_and_created_fn: Optional[Callable[[], Any]],
    value: Any,
) -> Any:
    """No value, and the lock can wait for its holder's release without
    taking the lock (``acquire_or_wait``: the mutexes of dogpile.mutexes).
    Take it if it is free; otherwise wait for the release and read the
    value the holder made, once.  Only a value still missing (its creator
    failed, or died) sends this caller back to the lock: waiters on other
    processes do not queue for the lock one after another just to read a
    value that is there, and a failed creation is retried once, not once
    per waiter."""
    timeout = d._wait_timeout
    deadline = None if timeout is None else _monotonic() + timeout
    waited = False
    while True:
        attempt = _attempt_here(d)
        if attempt is not None:
            attempt.refuse_its_owner(threading.get_ident(), "Dogpile")
        left = -1.0 if deadline is None else max(0.0, deadline - _monotonic())
        if _taken(mutex, wait(left)):
            break
        if not waited:
            waited = True
            _count_wait(d)
        # Released, or the wait ended (the holder's lease ran out, the
        # mutex's safety net, the deadline).  A creation of this process
        # shares its outcome, a failure included; another's left its
        # value where the value functions read.
        prior = _prior(d, attempt, arrived)
        if prior is not None and prior.has_outcome():
            return prior.outcome()
        found, createdtime = _read_unlocked(d, value_fn, value_and_created_fn)
        if found is not NO_VALUE:
            if not is_expired(createdtime, d._expiretime):
                return found
            # Expired already: a stale value, served while whoever holds
            # the lock now recreates it (or recreated here if it is free).
            return create(d, creator, value_fn, value_and_created_fn, found, createdtime)
        if deadline is not None and _monotonic() >= deadline:
            raise _timed_out(d)
    # Taken, at once or after a wait (a custom lock may wait inside
    # acquire_or_wait): an attempt that this caller arrived before, and
    # that has ended since, is the one it waited for (see _prior).
    prior = _prior(d, attempt, arrived)
    if prior is not None and prior.has_outcome():
        mutex.release()
        return prior.outcome()
    return _locked(d, mutex, creator, value_fn, value_and_created_fn, value, None, prior)


def _taken(mutex: Any, got: Any) -> bool:
    if got is True or got is False:
        return got
    # An awaitable is refused (an asyncio mutex); anything else counts by
    # its truth, as threading's acquire() is read.
    return check_acquired(mutex, got, "lock")


def _read_unlocked(
    d: Any,
    value_fn: Optional[Callable[[], Any]],
    value_and_created_fn: Optional[Callable[[], Any]],
) -> Any:
    """The value and its creation time, read without the lock after a
    release: what _locked reads to learn whether another caller created."""
    if value_and_created_fn is not None:
        value, createdtime = _read_stored(d, value_and_created_fn)
        return (value, createdtime) if has_stale(value, createdtime) else (NO_VALUE, -1.0)
    createdtime = d._createdtime
    if is_expired(createdtime, d._expiretime):
        # Created in another process: this one keeps no value of its own.
        return NO_VALUE, -1.0
    if value_fn is None:
        return d._value, createdtime
    try:
        return value_fn(), createdtime
    except NeedRegenerationException:
        return NO_VALUE, -1.0


def _read_stored(d: Any, value_and_created_fn: Callable[[], Any]) -> Any:
    """``(value, createdtime)`` from the caller's store, ``(NO_VALUE, -1.0)``
    when it has none; the time is kept on the Dogpile."""
    try:
        value, createdtime = pair(value_and_created_fn(), "value_and_created_fn")
    except NeedRegenerationException:
        value, createdtime = NO_VALUE, -1.0
    d._createdtime = createdtime
    return value, createdtime


def _count_wait(d: Any) -> None:
    d._waited += 1
    if _log.isEnabledFor(logging.DEBUG):
        _log.debug("%r: no value, waiting for the creator", d)


def _timed_out(d: Any) -> LockTimeout:
    d._timeouts += 1
    return LockTimeout(
        f"no value after waiting {d._wait_timeout} s (wait_timeout) "
        "for another caller's creator"
    )


def refresh_early(
    d: Any,
    creator: Callable[[], Any],
    value_fn: Optional[Callable[[], Any]],
    value_and_created_fn: Optional[Callable[[], Any]],
    value: Any,
    createdtime: float,
) -> Any:
    mutex = mutex_now(d)
    if not mutex.acquire(False):
        d._fresh += 1
        return value
    d._early += 1
    return _locked(d, mutex, creator, value_fn, value_and_created_fn, value, createdtime)


def _locked(
    d: Any,
    mutex: Any,
    creator: Callable[[], Any],
    value_fn: Optional[Callable[[], Any]],
    value_and_created_fn: Optional[Callable[[], Any]],
    value: Any,
    seen: Optional[float],
    prior: Optional[Attempt] = None,
) -> Any:
    """Holding the lock: create unless someone else just did.  ``seen``
    is the creation time an early refresh saw, None otherwise (see
    _rules.done_by_another).  ``prior`` is an abandoned attempt whose
    waiters this one serves."""
    handed_off = False
    attempt = None
    try:
        # Published before the value is read again, so that a caller
        # arriving meanwhile waits for this attempt and shares its
        # outcome instead of running the creator once more after it.
        # (A caller that came between taking the lock and this line
        # finds its failure by serial: see _wait.)
        attempt = _publish(d)
        if prior is not None:
            prior.next = attempt
        if seen is not None and _log.isEnabledFor(logging.DEBUG):
            _log.debug("%r: refreshing early", d)
        expiretime = d._expiretime
        if value_and_created_fn is not None:
            value, createdtime = _read_stored(d, value_and_created_fn)
            if value is not NO_VALUE and done_by_another(createdtime, seen, expiretime):
                return attempt.share(value)
            stale = value if createdtime > 0 else NO_VALUE
        elif value_fn is not None:
            if done_by_another(d._createdtime, seen, expiretime):
                try:
                    return attempt.share(value_fn())
                except NeedRegenerationException:
                    value = NO_VALUE
            stale = value
        else:
            if done_by_another(d._createdtime, seen, expiretime):
                return attempt.share(d._value)
            stale = d._value if d._createdtime > 0 else NO_VALUE
        if d._retry_here:
            # The last background job never ran: create here, once.
            d._retry_here = False
        elif hands_off(stale, d._background):
            handoff = Handoff(mutex.release, d)
            try:
                future = d._background.submit(
                    _create_in_background, d, handoff, creator, value_fn, value_and_created_fn
                )
            except RuntimeError:
                # Shut down: create here instead, and make sure a job
                # that got queued anyway never runs without the lock.
                handoff.cancel()
                _log.debug("%r: background executor refused the job", d)
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
                    d._stale += 1
                return stale
        return _run_creator(d, attempt, creator, value_fn, value_and_created_fn)
    finally:
        if attempt is not None:
            _settle(d, attempt)
        if not handed_off:
            mutex.release()


def _publish(d: Any) -> Attempt:
    """A new attempt, published for the callers that come to wait for it.

    ``d._serial`` moves on as an attempt is published and again as it
    ends (odd while one is pending), after the attempt itself is in
    place: a caller that read the serial before trying the lock knows
    whether an attempt it finds ended later (``attempt.serial >=
    arrived``: it was waiting for it) or earlier (it came after the
    outcome and creates).  Only the lock's holder writes these, so they
    need no lock of their own."""
    attempt = d._attempt = Attempt(threading.get_ident(), fork_generation, d._serial + 1)
    # The last failure is kept only for callers that began waiting
    # before this attempt; they wait for this one too now.
    d._failure = None
    d._serial = attempt.serial
    return attempt


def _settle(d: Any, attempt: Attempt) -> None:
    attempt.settle()
    if attempt.state == _rules.FAILED:
        d._failure = attempt
    if d._attempt is attempt:
        d._serial = attempt.serial + 1
        d._attempt = None


def _run_creator(
    d: Any,
    attempt: Attempt,
    creator: Callable[[], Any],
    value_fn: Optional[Callable[[], Any]],
    value_and_created_fn: Optional[Callable[[], Any]],
) -> Any:
    started = _monotonic()
    debug = False
    try:
        d._created += 1
        debug = _log.isEnabledFor(logging.DEBUG)
        if debug:
            _log.debug("%r: calling the creator", d)
        result = creator()
        if value_and_created_fn is not None:
            value, d._createdtime = pair(result, "creator")
        else:
            value = result
            if value_fn is None:
                d._value = value
            d._createdtime = _now()
    except Exception as exc:
        d._failed += 1
        attempt.finish(_rules.FAILED, exc)
        if debug:
            _log.debug("%r: the creator failed: %r", d, exc)
        raise
    except BaseException:
        attempt.finish(_rules.ABANDONED, None)
        raise
    else:
        attempt.finish(_rules.CREATED, value)
        return value
    finally:
        d._delta = _monotonic() - started


def _create_in_background(
    d: Any,
    handoff: "Handoff",
    creator: Callable[[], Any],
    value_fn: Optional[Callable[[], Any]],
    value_and_created_fn: Optional[Callable[[], Any]],
) -> None:
    if not handoff.start():
        return
    attempt = None
    try:
        attempt = _publish(d)
        _run_creator(d, attempt, creator, value_fn, value_and_created_fn)
    except Exception:
        # Nobody waits on a background creation, so its failure would
        # go unseen; the next caller to find the value expired retries.
        _log.warning("%r: background creation failed", d, exc_info=True)
    finally:
        if attempt is not None:
            _settle(d, attempt)
        handoff.release_logged()


def _job_never_ran(d: Any, future: Any) -> None:
    """A background job ended without running (a ProcessPoolExecutor
    that could not pickle it, a cancelled future): say so, and have the
    next caller that finds the value expired create it in place."""
    d._retry_here = True
    try:
        cancelled = future.cancelled()
        error = None if cancelled else future.exception(0)
    except Exception as exc:  # a future-like object that cannot say
        cancelled, error = False, exc
    if cancelled:
        _log.warning("%r: background creation was cancelled before it ran; the next "
                     "caller to find the value expired creates it", d)
    else:
        _log.warning("%r: background creation could not run; the next caller to "
                     "find the value expired creates it", d, exc_info=error)


# States of a handoff to a background job.
_HELD, _RUNNING, _RELEASED = range(3)


class Handoff:
    """The creation lock, handed from the caller that found the value
    expired to a background job.  Released exactly once: by the job when it
    ends or, when the job never runs (cancelled, or the executor failed to
    start it), by its future's done callback."""

    __slots__ = ("_release", "_dogpile", "state")

    def __init__(self, release: Callable[[], Any], dogpile: Any) -> None:
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
            _job_never_ran(self._dogpile, future[0])


def _release_when_done(future: Any, handoff: Handoff) -> None:
    add_done_callback = getattr(future, "add_done_callback", None)
    if add_done_callback is not None:
        add_done_callback(handoff.release_logged)

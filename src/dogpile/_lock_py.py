"""The twin's ``Lock`` slow path (dogpile.cache's ``Lock`` API): no
fresh value was read.  The fresh path stays in ``_core_py``."""

from typing import Any, Callable

from ._checks import check_acquired, check_callable, check_lock, not_initialised
from ._errors import NeedRegenerationException
from ._rules import NO_VALUE, has_stale, is_expired, pair


def lock_create(lock: Any, value: Any, createdtime: float) -> Any:
    """``Lock``'s slow path: no fresh value was read."""
    if not hasattr(lock, "_expiretime"):
        raise not_initialised(lock, "Lock")
    mutex = lock.mutex
    has_value = has_stale(value, createdtime)
    check_callable("creator", lock.creator)
    check_callable("async_creator", lock.async_creator, optional=True)
    wait = None
    # Not checked at construction: that would tax every fresh hit.  An
    # asyncio lock's acquire() returns a (truthy) coroutine that would pass
    # for the lock: refused by what it returns (check_acquired), or by
    # check_lock when the call itself fails.
    try:
        if has_value:
            got = mutex.acquire(False)
            if got is not True and not (got is not False and check_acquired(mutex, got)):
                return value
        else:
            wait = getattr(mutex, "acquire_or_wait", None)
            if wait is None:
                got = mutex.acquire()
                if got is not True and got is not False and got is not None:
                    check_acquired(mutex, got)
    except (AttributeError, TypeError):
        check_lock(mutex, "mutex")
        raise
    if not has_value and wait is not None:
        return _lock_wait_for_release(lock, mutex, wait)
    return _lock_locked(lock, mutex, value, has_value)


def _lock_wait_for_release(lock: Any, mutex: Any, wait: Callable[[float], Any]) -> Any:
    """Lock with no value, over a mutex that can wait for its holder's
    release without taking it (see _wait_for_release): read the value
    once after each release, and take the lock only to create."""
    while True:
        got = wait(-1.0)
        if got is not True and got is not False:
            got = check_acquired(mutex, got)
        if got:
            return _lock_locked(lock, mutex, NO_VALUE, False)
        try:
            value, createdtime = pair(lock.value_and_created_fn(), "value_and_created_fn")
        except NeedRegenerationException:
            continue
        if not is_expired(createdtime, lock._expiretime):
            return value
        if has_stale(value, createdtime):
            return lock_create(lock, value, createdtime)


def _lock_locked(lock: Any, mutex: Any, value: Any, has_value: bool) -> Any:
    """Lock, holding the mutex: create, unless a wait found a value."""
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
                value, createdtime = pair(lock.value_and_created_fn(), "value_and_created_fn")
            except NeedRegenerationException:
                pass
            else:
                if not is_expired(createdtime, lock._expiretime):
                    return value
                has_value = True
        if has_value and lock.async_creator is not None:
            lock.async_creator(mutex)
            # Only now: if async_creator raised, the mutex is still ours.
            handed_off = True
            return value
        value, createdtime = pair(lock.creator(), "creator")
        return value
    finally:
        if not handed_off:
            _release(mutex)


def _release(mutex: Any) -> None:
    try:
        mutex.release()
    except AttributeError:
        check_lock(mutex, "mutex")
        raise

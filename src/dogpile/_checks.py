"""Argument checks and their messages, shared by both implementations so that
bad input gets the same clear error from either.  None of this runs on the
fresh-hit path: the compiled core calls in here only to build an error."""

import functools
import inspect
import math
import sys
import threading
from typing import Any, Tuple

INFINITY = math.inf


def _kind(obj: Any) -> str:
    return type(obj).__name__


def _float(value: Any, name: str, expected: str) -> float:
    """``float(value)`` for an int or float already checked; an int beyond
    any float is a ValueError naming ``name``, not a bare OverflowError."""
    try:
        return float(value)
    except OverflowError:
        raise ValueError(
            f"{name} must be {expected}, got an int of {value.bit_length()} bits, "
            f"beyond the largest float ({sys.float_info.max:g})"
        ) from None


def expiretime_seconds(expiretime: Any) -> float:
    """Validate an expiry time and return it in seconds (infinity for None)."""
    if expiretime is None:
        return INFINITY
    if isinstance(expiretime, bool) or not isinstance(expiretime, (int, float)):
        raise TypeError(
            "expiretime must be a number of seconds (int or float, >= 0) "
            f"or None for never, not {_kind(expiretime)!r}"
        )
    seconds = _float(expiretime, "expiretime", "a number of seconds >= 0 or None for never")
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(
            "expiretime must be >= 0 seconds (or None for never), "
            f"got {expiretime!r}"
        )
    return seconds


def expiretime_public(seconds: float) -> "float | None":
    return None if seconds == INFINITY else float(seconds)


def createdtime_seconds(createdtime: Any, source: str = "createdtime") -> float:
    """Validate a creation time (epoch seconds; <= 0 means no value)."""
    if isinstance(createdtime, bool) or not isinstance(createdtime, (int, float)):
        raise TypeError(
            f"{source} must be a number (epoch seconds, as from time.time()), "
            f"not {_kind(createdtime)!r}"
        )
    seconds = _float(createdtime, source, "a number of epoch seconds")
    if math.isnan(seconds):
        raise ValueError(f"{source} must be a number of epoch seconds, got nan")
    return seconds


def check_lock(lock: Any, what: str = "lock") -> None:
    for method in ("acquire", "release"):
        if not callable(getattr(lock, method, None)):
            raise TypeError(
                f"{what} must have acquire() and release() methods, "
                f"like threading.Lock; {_kind(lock)!r} has no {method}()"
            )
    # An asyncio lock's acquire() returns a coroutine without waiting, and a
    # coroutine is truthy: the lock would seem taken while another holder
    # has it, and the creator would run unprotected.
    for method in ("acquire", "release"):
        if _is_coroutine_function(getattr(lock, method)):
            raise TypeError(
                f"{what} must be a threading lock, like threading.Lock or "
                f"dogpile.mutexes.RedisMutex; {_kind(lock)}.{method}() is a coroutine "
                "function (an asyncio lock): use it with dogpile.aio.AsyncDogpile "
                "or dogpile.aio.AsyncLock"
            )
    _check_waiter(lock, what)


def _check_waiter(lock: Any, what: str) -> None:
    """The optional ``acquire_or_wait(timeout)`` of a lock (the mutexes of
    dogpile.mutexes have one), which a Dogpile calls when it has no value."""
    wait = getattr(lock, "acquire_or_wait", None)
    if wait is None:
        return
    if not callable(wait):
        raise TypeError(
            f"{what}.acquire_or_wait must be a method (timeout) -> bool, or absent; "
            f"{_kind(lock)}.acquire_or_wait is a {_kind(wait)!r}"
        )
    if _is_coroutine_function(wait):
        raise TypeError(
            f"{what} must be a threading lock; {_kind(lock)}.acquire_or_wait() is a "
            "coroutine function (an asyncio lock): use it with dogpile.aio.AsyncDogpile "
            "or dogpile.aio.AsyncLock"
        )


def check_acquired(lock: Any, got: Any, what: str = "mutex") -> bool:
    """Whether ``lock.acquire(...)``, which returned ``got`` (neither True
    nor False), took the lock.  An awaitable is an asyncio lock's
    acquire(), which has not run: it is closed unrun and refused, as
    check_lock refuses such a lock up front.  Checking the result instead
    of the lock keeps inspect off Lock's stale path (dogpile.cache builds a
    Lock per call)."""
    if inspect.isawaitable(got):
        close = getattr(got, "close", None)
        if close is not None:
            close()  # a coroutine never started: nothing was locked
        check_lock(lock, what)
        raise TypeError(
            f"{what} must be a threading lock, like threading.Lock or "
            f"dogpile.mutexes.RedisMutex; {_kind(lock)}.acquire() returned an awaitable "
            "(an asyncio lock): use it with dogpile.aio.AsyncDogpile or dogpile.aio.AsyncLock"
        )
    return bool(got)


def _is_coroutine_function(fn: Any) -> bool:
    """inspect.iscoroutinefunction, also through a functools.partial of a
    bound method, which it does not see through before Python 3.10."""
    for _ in range(32):  # a chain of partials and methods, never a cycle
        if inspect.iscoroutinefunction(fn):
            return True
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif inspect.ismethod(fn):
            fn = fn.__func__
        else:
            return False
    return False


def check_callable(name: str, fn: Any, optional: bool = False) -> None:
    if fn is None and optional:
        return
    if not callable(fn):
        raise TypeError(f"{name} must be callable, not {_kind(fn)!r}")


def check_acquire_args(creator: Any, value_fn: Any, value_and_created_fn: Any) -> None:
    check_callable("creator", creator)
    check_callable("value_fn", value_fn, optional=True)
    check_callable("value_and_created_fn", value_and_created_fn, optional=True)
    if value_fn is not None and value_and_created_fn is not None:
        raise TypeError(
            "pass value_fn or value_and_created_fn, not both: "
            "value_and_created_fn already returns the value"
        )


def unpack_pair(result: Any, source: str) -> Tuple[Any, float]:
    """Split a ``(value, createdtime)`` pair returned by ``source``."""
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise TypeError(
            f"{source} must return a (value, createdtime) pair, "
            f"got {_kind(result)} {_short_repr(result)}"
        )
    return result[0], createdtime_seconds(
        result[1], f"the createdtime returned by {source}"
    )


def _short_repr(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception:  # a broken __repr__ must not hide the real error
        return "<unrepresentable>"
    return text if len(text) <= 60 else text[:57] + "..."


def _positive_seconds(name: str, value: Any, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not {_kind(value)!r}")
    seconds = _float(value, name, "a number of seconds or None")
    if math.isnan(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound} (or None), got {value!r}")
    return seconds


def wait_timeout_seconds(wait_timeout: Any) -> "float | None":
    """Validate ``wait_timeout``: None or infinity (wait as long as it
    takes), or seconds >= 0 that a lock's acquire() accepts."""
    if wait_timeout is None:
        return None
    seconds = _positive_seconds("wait_timeout", wait_timeout, allow_zero=True)
    if seconds == INFINITY:
        return None
    if seconds > threading.TIMEOUT_MAX:
        raise ValueError(
            f"wait_timeout must be at most {threading.TIMEOUT_MAX:g} seconds "
            f"(threading.TIMEOUT_MAX) or None, got {wait_timeout!r}"
        )
    return seconds


def early_refresh_beta(early_refresh: Any) -> float:
    """Validate ``early_refresh`` (XFetch's beta); 0.0 means off."""
    if early_refresh is None:
        return 0.0
    beta = _positive_seconds("early_refresh", early_refresh, allow_zero=False)
    if beta == INFINITY:
        raise ValueError("early_refresh must be finite, got inf")
    return beta


def check_executor(background: Any) -> None:
    if isinstance(background, type):
        # ThreadPoolExecutor rather than ThreadPoolExecutor(): its submit is
        # a function that would take the first argument as self.
        raise TypeError(
            "background must be a concurrent.futures.Executor instance, not the class "
            f"{background.__name__!r} itself: pass {background.__name__}(...)"
        )
    if background is not None and not callable(getattr(background, "submit", None)):
        raise TypeError(
            "background must be a concurrent.futures.Executor (an object with "
            f"submit()), not {_kind(background)!r}"
        )


def check_lock_timeout(lock: Any) -> None:
    """A wait_timeout needs a lock whose acquire() takes a timeout."""
    try:
        params = inspect.signature(lock.acquire).parameters.values()
    except (TypeError, ValueError):  # no signature to read: trust the lock
        return
    for p in params:
        if p.name == "timeout" or p.kind is inspect.Parameter.VAR_KEYWORD:
            return
    raise TypeError(
        f"wait_timeout needs a lock whose acquire() accepts a timeout, like "
        f"threading.Lock.acquire(blocking, timeout); {_kind(lock)}.acquire() does not"
    )


def not_initialised(obj: Any, base: str = "Dogpile") -> RuntimeError:
    """The error for a Dogpile (or, with ``base="Lock"``, a Lock) whose
    ``__init__`` never ran (a subclass whose ``__init__`` does not call
    ``super().__init__()``, or ``Dogpile.__new__(Dogpile)``)."""
    return RuntimeError(
        f"this {_kind(obj)} was never initialised: {base}.__init__() did not run "
        f"(a subclass's __init__ must call super().__init__({_INIT_ARGS[base]}))"
    )


_INIT_ARGS = {
    "Dogpile": "expiretime, ...",
    "Lock": "mutex, creator, value_and_created_fn, expiretime, ...",
}
